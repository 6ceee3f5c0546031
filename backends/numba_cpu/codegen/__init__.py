"""Whole-graph code generation: planning, storage, emitters, micro-kernel sources and the target tiers.

Nothing here imports numba (``tests/test_layering.py`` checks it): a graph's code is planned and rendered as
text, keyed and looked up in the compile cache, and a prebuilt library loaded, without the JIT. The API of
``program`` (values, stages, the emit context, ``generate``) is re-exported here for emitters.
"""

from keydnn.backends.numba_cpu.codegen.program import *  # noqa: F401,F403
from keydnn.backends.numba_cpu.codegen.program import __all__  # noqa: F401
