"""Golden text files: compare ``str(graph)`` with a file beside the test, or rewrite it on request.

Set ``KEYDNN_UPDATE_GOLDENS=1`` to (re)write every golden a test run touches;
review the diff, then commit. Without the switch a missing golden fails.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["assert_golden", "UPDATE_ENV"]

UPDATE_ENV = "KEYDNN_UPDATE_GOLDENS"


def assert_golden(text: str, path: str | os.PathLike) -> None:
    """Assert ``text`` equals the golden at ``path`` (or write it when the switch is set)."""
    path = Path(path)
    if os.environ.get(UPDATE_ENV) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        raise AssertionError(f"golden {path} is missing; run with {UPDATE_ENV}=1 to create it")
    expected = path.read_text()
    if text != expected:
        import difflib

        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"{path} (golden)", "actual"))
        raise AssertionError(f"IR differs from golden {path} (set {UPDATE_ENV}=1 to accept):\n{diff}")
