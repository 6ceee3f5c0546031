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
addresses), ``i`` an int64, ``f`` a float64. The Python functions the cfuncs
are made from (one per helper and dtype) are rendered into a module in the
compile cache whose name is a digest of its text and of every kernel source
inlined into it (``thunks_module``): numba's disk cache of a cfunc is keyed
by its file only, so an edit to a helper gives a new file, never a stale
cfunc, and there is no generated file to keep current in the tree.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from pathlib import Path

import numpy as np

from keydnn.backends.numba_cpu.codegen.emit_conv_recurrent import HELPERS_CONV_SEQ
from keydnn.backends.numba_cpu.codegen.emit_tensor import HELPERS_TENSOR
from keydnn.backends.numba_cpu.codegen.dense_kernel_source import DENSE_SIGNATURE, DENSE_TILES, dense_kernel_name
from keydnn.backends.numba_cpu.codegen.ukernel_source import (
    CHANNEL_TILES, DEPTHWISE_SHAPES, LANES, PACKED_TILES, TILES, blocks_kernel_name, channel_kernel_name,
    depthwise_kernel_name, kernel_name,
)

__all__ = ["HELPERS", "helper_address", "yield_address", "thunk_cfunc", "render_thunks", "thunks_module", "thunk_name"]

logger = logging.getLogger(__name__)

_MK = "i" + "aii" + "ai" + "aii" + "ii" + "aii" + "i" + "ffff"
_MKP = "i" + "ai" + "ai" + "ti" + "i" + "aiii" + "ii" + "aii" + "i" + "ffff"
_MKC = "i" + "ai" + "ti" + "ti" + "ai" + "aiiii" + "aii" + "i" + "ffff"
_DWK = "aiii" + "aiii" + "aiii" + "iii" + "ai" + "ii" + "ii" + "i" + "ffff"

#: helper name -> (module, parameter kinds)
HELPERS: dict[str, tuple[str, str]] = {
    "im2col_panel": ("helpers", "a" + "i" * 15 + "aii"),
    "pad_rows": ("helpers", "aiiii" + "ai" + "iiiiii"),
    "act_copy": ("helpers", "aiaii" + "i" + "ffff"),
    "copy_flat": ("helpers", "aiaii"),
    "copy_rows": ("helpers", "aii" + "aii" + "ii"),
    "add_bias_act_planes": ("helpers", "aiii" + "aii" + "i" + "ffff"),
    "max_pool_planes": ("helpers", "aiai" + "i" * 11),
    "avg_pool_planes": ("helpers", "aiai" + "i" * 11),
    "mean_rows_flat": ("helpers", "aiaiii"),
    "max_rows_flat": ("helpers", "aiaiii"),
    "max_cols_flat": ("helpers", "aiaiii"),
    "softmax_flat": ("helpers", "aiaiiii"),
    "affine_flat": ("helpers", "aiaiiii" + "dii"),
    "prelu_flat": ("helpers", "aiaiiii" + "di"),
    "pad_flat": ("helpers_move", "aiai" + "i" * 7 + "f"),
    "crop_flat": ("helpers_move", "aiai" + "i" * 7),
    "upsample_flat": ("helpers_move", "aiai" + "i" * 6),
    "dilate_flat": ("helpers_move", "aiai" + "i" * 10),
    "transpose_flat": ("helpers_move", "aiai" + "t" + "iii" + "ii"),
    "merge_flat": ("helpers_move", "aiai" + "t" + "iiii" + "f"),
    "merge_span": ("helpers_move", "aiaiii" + "f" + "i" + "ffff"),
    "concat_rows": ("helpers_move", "aiai" + "iiii"),
    "conv_direct_planes": ("helpers", "aiiii" + "aiii" + "ai" + "i" * 14),
    "pad_rows_phased": ("depthwise", "aiiii" + "ai" + "ii" + "i" + "ii" + "ii"),
    "dw_conv_planes": ("depthwise", "aiii" + "aiii" + "ai" + "i" * 13 + "ai" + "ii" + "i" + "ffff"),
    # sequence ops (issue 17): cg_kernels_seq
    "rnn_rows": ("helpers_seq", "aii" + "a" + "iiiii" + "aii" + "aii" + "ai" + "aii" + "ai" + "i" * 17),
    "embed_rows": ("helpers_seq", "ii" + "aii" + "aii" + "i" + "ai"),
    "seq_mask_rows": ("helpers_seq", "ii" + "ai" + "ii" + "f" + "ai"),
    "masking_rows": ("helpers_seq", "ai" + "ii" + "f" + "ai"),
    "repeat_rows": ("helpers_seq", "ai" + "ii" + "ai"),
    **{kernel_name(mr, nv, lanes): ("ukernels", _MK) for lanes in LANES for mr, nv in TILES},
    **{kernel_name(mr, nv, lanes, True): ("ukernels", _MKP) for lanes in LANES for mr, nv in PACKED_TILES},
    **{blocks_kernel_name(mr, nv, lanes): ("ukernels", _MKP + "i") for lanes in LANES for mr, nv in PACKED_TILES},
    **{channel_kernel_name(mr, nv, lanes): ("ukernels", _MKC) for lanes in LANES for mr, nv in CHANNEL_TILES},
    **{depthwise_kernel_name(kh, kw, sw, lanes): ("ukernels", _DWK) for lanes in LANES
       for kh, kw, sw in DEPTHWISE_SHAPES},
}
HELPERS.update(HELPERS_TENSOR)  # issue 18's tensor math (cg_kernels_tensor)
HELPERS.update(HELPERS_CONV_SEQ)  # issue 17's conv_lstm (cg_kernels_conv_seq)
HELPERS["transpose_matrix"] = ("transpose2d", "aiai" + "iiii")  # boundary layout transposes
HELPERS["scatter_phases"] = ("convt", "aii" + "ai" + "i" * 10)  # transposed convs with kernel == stride
HELPERS.update({dense_kernel_name(mr, nv, lanes): ("ukernels_dense", DENSE_SIGNATURE)  # dense over 2L panels
                for lanes in LANES for mr, nv in DENSE_TILES})

_KERNELS_ROOT = Path(__file__).resolve().parents[1]  # backends/numba_cpu


def sources_digest() -> str:
    """Digest of the sources whose code numba inlines into the thunks: the kernels, the jit options they import
    (``ops/lowering.py``), and the shared activation codes."""
    h = hashlib.sha256()
    paths = [*sorted((_KERNELS_ROOT / "kernels").glob("*.py")), _KERNELS_ROOT / "ops" / "lowering.py",
             _KERNELS_ROOT / "codegen" / "codes.py", _KERNELS_ROOT.parent / "epilogues.py"]
    for path in paths:
        h.update(path.relative_to(_KERNELS_ROOT.parent).as_posix().encode())
        h.update(path.read_bytes())
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
        '"""Thunk bodies for ``keydnn.backends.numba_cpu.kernels.thunks`` (rendered into the compile cache)."""',
        "",
        "from __future__ import annotations",
        "",
        "import numpy as np",
        "",
        "from keydnn.backends.numba_cpu.kernels.simd import farray",
    ]
    for module, names in sorted(modules.items()):
        lines.append(f"from keydnn.backends.numba_cpu.kernels.{module} import (  # noqa: F401")
        lines += [f"    {n}," for n in sorted(names)]
        lines.append(")")
    text = "\n".join(lines) + "\n"
    for helper in HELPERS:
        for dtype in _DTYPES:
            text += _render_one(helper, dtype)
    return text


@functools.lru_cache(maxsize=1)
def thunks_module():
    """The module of thunk bodies, rendered into the compile cache (once per digest) and imported from there."""
    import importlib.util
    import sys
    import tempfile

    from keydnn.atomic import atomic_write_text
    from keydnn.backends.numba_cpu.runtime.cache import cache_enabled, cache_root

    text = render_thunks()
    key = hashlib.sha256((text + sources_digest()).encode()).hexdigest()[:20]
    directory = cache_root() / "thunks" if cache_enabled() else Path(tempfile.mkdtemp(prefix="keydnn-thunks-"))
    path = directory / f"thunks_{key}.py"
    if not path.is_file() or path.read_text() != text:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    name = f"keydnn_thunks_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_lock = threading.Lock()


def thunk_cfunc(helper: str, dtype: str):
    """The numba cfunc of ``helper``'s thunk (compiled, or loaded from numba's cache, on first use)."""
    with _lock:
        return _cfunc(helper, str(np.dtype(dtype)))


@functools.lru_cache(maxsize=None)
def _cfunc(helper: str, dtype: str):
    import numba

    from keydnn.backends.numba_cpu.runtime.cache import cache_enabled

    py = getattr(thunks_module(), thunk_name(helper, dtype))
    return numba.cfunc(signature(helper), cache=cache_enabled(), nogil=True, error_model="numpy", _nrt=False)(py)


def helper_address(helper: str, dtype: str) -> int:
    """Address of the thunk of ``helper`` for arrays of ``dtype`` (compiled or loaded on first use)."""
    from keydnn.backends.numba_cpu.runtime.stages import is_stage, stage_address

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
    print(thunks_module().__file__)
