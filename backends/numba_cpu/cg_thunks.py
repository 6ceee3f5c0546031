"""C-callable thunks of the helpers the generated code calls, and the table of their addresses.

Generated code calls helpers through addresses (``simd.fcall``) instead of
linking them: numba copies every linked callee into the caller's library and
optimizes and compiles it again, which made each graph cost seconds to
compile. A thunk is a ``numba.cfunc`` (compiled once per machine and cached
on disk, created lazily on first use) that takes arrays as raw addresses,
rebuilds array views (``simd.farray``) and calls the njit helper, which is
inlined into it.

Each helper declares its parameters with one letter each: ``a`` an array of
the graph's dtype, ``d`` a float64 array, ``t`` an int64 array (all passed as
addresses), ``i`` an int64, ``f`` a float64. ``thunks_gen.py`` (written by
``write_thunks``; a test keeps it current) holds the Python functions the
cfuncs are made from, one per helper and dtype.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from pathlib import Path

import numpy as np

from keydnn.backends.numba_cpu.cg_emit_tensor import HELPERS_TENSOR
from keydnn.backends.numba_cpu.ukernel_source import (
    CHANNEL_TILES, DEPTHWISE_SHAPES, LANES, PACKED_TILES, TILES, blocks_kernel_name, channel_kernel_name,
    depthwise_kernel_name, kernel_name,
)

__all__ = ["HELPERS", "helper_address", "yield_address", "thunk_cfunc", "render_thunks", "write_thunks", "THUNKS_PATH", "thunk_name"]

logger = logging.getLogger(__name__)

_MK = "i" + "aii" + "ai" + "aii" + "ii" + "aii" + "i" + "ffff"
_MKP = "i" + "ai" + "ai" + "ti" + "i" + "aiii" + "ii" + "aii" + "i" + "ffff"
_MKC = "i" + "ai" + "ti" + "ti" + "ai" + "aiiii" + "aii" + "i" + "ffff"
_DWK = "aiii" + "aiii" + "aiii" + "iii" + "ai" + "ii" + "ii" + "i" + "ffff"

#: helper name -> (module, parameter kinds)
HELPERS: dict[str, tuple[str, str]] = {
    "im2col_panel": ("cg_kernels", "a" + "i" * 15 + "aii"),
    "pad_rows": ("cg_kernels", "aiiii" + "ai" + "iiiiii"),
    "act_copy": ("cg_kernels", "aiaii" + "i" + "ffff"),
    "copy_flat": ("cg_kernels", "aiaii"),
    "copy_rows": ("cg_kernels", "aii" + "aii" + "ii"),
    "add_bias_act_planes": ("cg_kernels", "aiii" + "aii" + "i" + "ffff"),
    "max_pool_planes": ("cg_kernels", "aiai" + "i" * 11),
    "avg_pool_planes": ("cg_kernels", "aiai" + "i" * 11),
    "mean_rows_flat": ("cg_kernels", "aiaiii"),
    "max_rows_flat": ("cg_kernels", "aiaiii"),
    "max_cols_flat": ("cg_kernels", "aiaiii"),
    "softmax_flat": ("cg_kernels", "aiaiiii"),
    "affine_flat": ("cg_kernels", "aiaiiii" + "dii"),
    "prelu_flat": ("cg_kernels", "aiaiiii" + "di"),
    "pad_flat": ("cg_kernels", "aiai" + "i" * 7 + "f"),
    "crop_flat": ("cg_kernels", "aiai" + "i" * 7),
    "upsample_flat": ("cg_kernels", "aiai" + "i" * 6),
    "dilate_flat": ("cg_kernels", "aiai" + "i" * 10),
    "transpose_flat": ("cg_kernels", "aiai" + "t" + "iii" + "ii"),
    "merge_flat": ("cg_kernels", "aiai" + "t" + "iiii" + "f"),
    "merge_span": ("cg_kernels", "aiaiii" + "f" + "i" + "ffff"),
    "concat_rows": ("cg_kernels", "aiai" + "iiii"),
    "conv_direct_planes": ("cg_kernels", "aiiii" + "aiii" + "ai" + "i" * 14),
    "pad_rows_phased": ("cg_depthwise", "aiiii" + "ai" + "ii" + "i" + "ii" + "ii"),
    "dw_conv_planes": ("cg_depthwise", "aiii" + "aiii" + "ai" + "i" * 13 + "ai" + "ii" + "i" + "ffff"),
    # sequence ops (issue 17): cg_kernels_seq
    "rnn_rows": ("cg_kernels_seq", "aii" + "a" + "iiiii" + "aii" + "aii" + "ai" + "aii" + "ai" + "i" * 17),
    "embed_rows": ("cg_kernels_seq", "ii" + "aii" + "aii" + "i" + "ai"),
    "seq_mask_rows": ("cg_kernels_seq", "ii" + "ai" + "ii" + "f" + "ai"),
    "masking_rows": ("cg_kernels_seq", "ai" + "ii" + "f" + "ai"),
    "repeat_rows": ("cg_kernels_seq", "ai" + "ii" + "ai"),
    **{kernel_name(mr, nv, lanes): ("ukernels", _MK) for lanes in LANES for mr, nv in TILES},
    **{kernel_name(mr, nv, lanes, True): ("ukernels", _MKP) for lanes in LANES for mr, nv in PACKED_TILES},
    **{blocks_kernel_name(mr, nv, lanes): ("ukernels", _MKP + "i") for lanes in LANES for mr, nv in PACKED_TILES},
    **{channel_kernel_name(mr, nv, lanes): ("ukernels", _MKC) for lanes in LANES for mr, nv in CHANNEL_TILES},
    **{depthwise_kernel_name(kh, kw, sw, lanes): ("ukernels", _DWK) for lanes in LANES
       for kh, kw, sw in DEPTHWISE_SHAPES},
}
HELPERS.update(HELPERS_TENSOR)  # issue 18's tensor math (cg_kernels_tensor)

THUNKS_PATH = Path(__file__).with_name("thunks_gen.py")
#: Modules whose code ends up inside the thunks. numba's disk cache of a cfunc is keyed by the file
#: that defines it (thunks_gen.py) only, so thunks_gen.py records a digest of these: editing one of
#: them changes the rendered file (the sync test says to regenerate it), which invalidates the cache.
THUNK_SOURCES = ("simd.py", "cg_kernels.py", "cg_kernels_seq.py", "cg_depthwise.py", "ukernels.py", "kernels_elementwise.py",
                 "kernels_merge.py", "conv_direct.py", "lowering.py", "codes.py", "functions.py", "../epilogues.py",
                 "cg_kernels_tensor.py", "kernels_math.py", "vmath.py")


def sources_digest() -> str:
    h = hashlib.sha256()
    for name in THUNK_SOURCES:
        h.update(name.encode())
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()
_DTYPES = {"float32": "f32", "float64": "f64"}
_C_TYPES = {"a": "int64", "d": "int64", "t": "int64", "i": "int64", "f": "float64"}


def thunk_name(helper: str, dtype: str) -> str:
    return f"{helper}_{_DTYPES[dtype]}"


def signature(helper: str) -> str:
    kinds = HELPERS[helper][1]
    return f"void({', '.join(_C_TYPES[k] for k in kinds)})"


def _render_one(helper: str, dtype: str) -> str:
    module, kinds = HELPERS[helper]
    params = [f"a{i}" for i in range(len(kinds))]
    args = []
    for p, k in zip(params, kinds):
        if k == "a":
            args.append(f"farray({p}, np.{dtype})")
        elif k == "d":
            args.append(f"farray({p}, np.float64)")
        elif k == "t":
            args.append(f"farray({p}, np.int64)")
        else:
            args.append(p)
    return (f"\n\ndef {thunk_name(helper, dtype)}({', '.join(params)}):\n"
            f"    {helper}({', '.join(args)})\n")


def render_thunks() -> str:
    modules: dict[str, list[str]] = {}
    for helper, (module, _) in HELPERS.items():
        modules.setdefault(module, []).append(helper)
    lines = [
        '"""Thunk bodies for ``cg_thunks`` (generated by ``cg_thunks.write_thunks``; do not edit by hand)."""',
        "",
        "from __future__ import annotations",
        "",
        "import numpy as np",
        "",
        "from keydnn.backends.numba_cpu.simd import farray",
    ]
    digest = [f'#: sha256 of {", ".join(THUNK_SOURCES)} when this file was written', f'SOURCES_DIGEST = "{sources_digest()}"']
    for module, names in sorted(modules.items()):
        lines.append(f"from keydnn.backends.numba_cpu.{module} import (  # noqa: F401")
        lines += [f"    {n}," for n in sorted(names)]
        lines.append(")")
    text = "\n".join(lines) + "\n\n" + "\n".join(digest) + "\n"
    for helper in HELPERS:
        for dtype in _DTYPES:
            text += _render_one(helper, dtype)
    return text


def write_thunks(path: Path = THUNKS_PATH) -> bool:
    text = render_thunks()
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


_lock = threading.Lock()


def thunk_cfunc(helper: str, dtype: str):
    """The numba cfunc of ``helper``'s thunk (compiled, or loaded from numba's cache, on first use)."""
    with _lock:
        return _cfunc(helper, str(np.dtype(dtype)))


@functools.lru_cache(maxsize=None)
def _cfunc(helper: str, dtype: str):
    import numba

    from keydnn.backends.numba_cpu import thunks_gen

    py = getattr(thunks_gen, thunk_name(helper, dtype))
    return numba.cfunc(signature(helper), cache=_cache_is_current(), nogil=True, error_model="numpy", _nrt=False)(py)


@functools.lru_cache(maxsize=1)
def _cache_is_current() -> bool:
    from keydnn.backends.numba_cpu import thunks_gen

    if thunks_gen.SOURCES_DIGEST == sources_digest():
        return True
    logger.warning("thunks_gen.py is stale (a helper changed; run python -m keydnn.backends.numba_cpu.cg_thunks); "
                   "compiling thunks without numba's disk cache")
    return False


def helper_address(helper: str, dtype: str) -> int:
    """Address of the thunk of ``helper`` for arrays of ``dtype`` (compiled or loaded on first use)."""
    from keydnn.backends.numba_cpu.cg_stagefn import is_stage, stage_address

    if is_stage(helper):  # a shared stage function of generated code (same for every dtype: its text says it)
        return stage_address(helper)
    if helper not in HELPERS:
        raise KeyError(f"no thunk for helper {helper!r}")
    with _lock:
        return int(_cfunc(helper, str(np.dtype(dtype))).address)


@functools.lru_cache(maxsize=1)
def yield_address() -> int:
    """Address of the OS's yield call (``sched_yield``, ``SwitchToThread``), or 0 where none is found."""
    import ctypes

    for lib, name in ((None, "sched_yield"), ("kernel32", "SwitchToThread")):
        try:
            fn = getattr(ctypes.CDLL(lib) if lib is None else ctypes.WinDLL(lib), name)  # type: ignore[attr-defined]
        except (OSError, AttributeError):
            continue
        return int(ctypes.cast(fn, ctypes.c_void_p).value or 0)
    logger.debug("no OS yield call found; waiting threads only spin")
    return 0


if __name__ == "__main__":  # pragma: no cover
    print("changed" if write_thunks() else "up to date")
