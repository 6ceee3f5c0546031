"""keydnn's version: a leaf module, so backends and the CLI can read it without importing the package API.

pyproject.toml reads it too (``[tool.setuptools.dynamic]``), so the number is written once.
"""

__version__ = "0.1.0"
