"""The host CPU as the code generator sees it: vector width, identity for cache keys, thread count.

Pure Python over NumPy's own feature detection, so that keying the compile
cache and loading a prebuilt library never import numba or LLVM.
"""

from __future__ import annotations

import functools
import logging
import os
import platform

import numpy as np

__all__ = ["cpu_features", "native_lanes", "dw_lanes", "cpu_identity", "thread_count"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The instruction-set extensions NumPy found on this CPU (e.g. AVX2, AVX512F)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features  # type: ignore[no-redef]
    return frozenset(k for k, v in features.items() if v)


@functools.lru_cache(maxsize=None)
def native_lanes(dtype: str = "float32") -> int:
    """Lanes of one vector register of the code-generation target for ``dtype`` (``target.current_target``:
    the widest tier this CPU has, or the one ``KEYDNN_CPU_TARGET`` forces; AVX-512: 16 float32, AVX2: 8,
    generic: 4)."""
    from keydnn.backends.numba_cpu.codegen.target import current_target

    return current_target().lanes(np.dtype(dtype))


def dw_lanes() -> int:
    """The vector length of the helpers that serve every dtype alike (depthwise convs, copies, merges): the
    target's float32 vector. Numba helpers read it as a module constant, frozen when they compile."""
    return native_lanes("float32")


@functools.lru_cache(maxsize=1)
def cpu_identity() -> str:
    """What compiled code is specific to: architecture, model name, instruction-set extensions and the
    code-generation tier."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from keydnn.backends.numba_cpu.codegen.target import current_target

    return f"{platform.machine()}|{model}|{','.join(sorted(cpu_features()))}|{current_target().identity()}"


@functools.lru_cache(maxsize=1)
def thread_count() -> int:
    """Threads a call may use: ``$NUMBA_NUM_THREADS`` if set (numba's own knob), else the usable CPUs."""
    explicit = os.environ.get("NUMBA_NUM_THREADS")
    if explicit and explicit.strip().isdigit():
        return max(1, int(explicit))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
