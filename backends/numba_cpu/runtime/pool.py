"""The native worker pool (``cpu_pool.c``): built once per machine into the compile cache, loaded with ctypes.

Generated entries with prebuilt libraries (``cg_aot``) are C functions; the
pool runs one on several threads without the GIL, so a second core joins a
batch-1 call within microseconds instead of after a GIL hand-over (15 us to
several ms). ``run`` is None when no C compiler is at hand, the cache is off,
or ``KEYDNN_CPU_POOL=0``: calls then use Python helper threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Optional

__all__ = ["pool_function", "SOURCE"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("pool.c")


def _enabled() -> bool:
    return os.environ.get("KEYDNN_CPU_POOL", "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=1)
def _library() -> Optional[ctypes.CDLL]:
    from keydnn.atomic import atomic_write_bytes
    from keydnn.backends.numba_cpu.runtime.aot import compiler
    from keydnn.backends.numba_cpu.runtime.cache import cache_enabled, cache_root

    cc = compiler()
    if cc is None or not cache_enabled():
        return None
    text = SOURCE.read_bytes()
    tag = hashlib.sha256(text + cc.encode()).hexdigest()[:24]
    store = cache_root() / "numba-cpu" / "objects"
    target = store / f"pool_{tag}.so"
    try:
        if not target.exists():
            store.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=store) as tmp:
                out = Path(tmp) / "pool.so"
                subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SOURCE), "-lpthread"], check=True,
                               capture_output=True, timeout=120)
                atomic_write_bytes(target, out.read_bytes())
        lib = ctypes.CDLL(str(target))
        run = lib.keydnn_pool_run
        run.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 4
        run.restype = ctypes.c_int64
        lib.keydnn_pool_workers.restype = ctypes.c_int64
        return lib
    except (OSError, subprocess.SubprocessError, AttributeError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        logger.info("no native worker pool (%s: %s %s); Python helper threads are used", type(exc).__name__, exc,
                    detail.decode(errors="replace")[-300:])
        return None


def pool_function() -> Optional[Callable[..., int]]:
    """``run(entry_address, nthr, gen, n, args_address)``, or None where the pool is unavailable."""
    if not _enabled():
        return None
    lib = _library()
    return None if lib is None else lib.keydnn_pool_run
