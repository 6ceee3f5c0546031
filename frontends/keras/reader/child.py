"""Reading a file in a child process (child side): read, then write the spec or the error for the parent."""

from __future__ import annotations

import os
from pathlib import Path

from keydnn.errors import KerasInteropError

from .files import read_keras_file
from .isolation import ISOLATED_READ_MEMORY
from .transfer import error_to_json, spec_to_dir

__all__ = ["isolated_main"]


def isolated_main(path: str, out: str) -> int:
    """Child side: read ``path``, write the spec (or the error) under ``out``."""
    try:
        import resource

        with open("/proc/self/statm", encoding="ascii") as fh:
            vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = vm + ISOLATED_READ_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):  # not Linux: no limit beyond the reader's own bounds
        pass
    target = Path(out)
    try:
        spec = read_keras_file(path, isolate=False)
    except KerasInteropError as exc:
        (target / "error.json").write_text(error_to_json(exc), "utf-8")
        return 0
    spec_to_dir(spec, target)
    return 0
