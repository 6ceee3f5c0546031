"""conv2d lowering: bind weights and epilogue, pick direct loops, im2col or BLAS by shape.

Every kernel takes a private weight copy, a bias that is zeros when the op has
none, and applies the fused epilogue while the output is still in cache.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional, Sequence

import numpy as np

from keydnn.backends.numba_cpu.ops.conv_direct import conv2d_direct
from keydnn.backends.numba_cpu.ops.conv_gemm import blas_scratch, conv2d_blas, conv2d_im2col, im2col_scratch
from keydnn.backends.numba_cpu.ops.kernels_elementwise import encode_activation
from keydnn.backends.numba_cpu.ops.lowering import LowerContext, LoweredOp, register_kernel, require_nchw

__all__ = ["choose_algorithm", "lower_conv2d", "FORCE_ALGORITHM", "ALGORITHMS", "ThreadScratch"]

logger = logging.getLogger(__name__)

#: Tests set this to one of ALGORITHMS to exercise that kernel on every shape.
FORCE_ALGORITHM: Optional[str] = None
#: Filters reducing over at least this many inputs, with this many outputs per group, use BLAS.
BLAS_MIN_DEPTH = 512
BLAS_MIN_OUTPUTS = 128
#: Every conv2d kernel by name (what FORCE_ALGORITHM may name).
ALGORITHMS = ("direct", "im2col", "blas")


def choose_algorithm(cg: int, kh: int, kw: int, og: int, groups: int) -> str:
    """Pick the kernel by filter shape (thresholds measured on 2 cores).

    Depthwise filters (one input channel per group) make a degenerate GEMM, so
    they take the direct loops. Everything else unfolds (im2col) and multiplies
    on numba's threads. Only very deep, wide filters hand the product to BLAS,
    where one large GEMM amortizes BLAS's own threading.
    """
    if FORCE_ALGORITHM is not None:
        return FORCE_ALGORITHM
    if cg == 1 and groups > 1:
        return "direct"
    if cg * kh * kw >= BLAS_MIN_DEPTH and og >= BLAS_MIN_OUTPUTS:
        return "blas"
    return "im2col"


#: Kernels that unfold the input (im2col): algorithm -> (kernel, scratch size in elements).
_UNFOLDED = {"im2col": (conv2d_im2col, im2col_scratch), "blas": (conv2d_blas, blas_scratch)}


class ThreadScratch:
    """A flat work array per thread, grown on demand: concurrent calls never share scratch."""

    def __init__(self, dtype: np.dtype) -> None:
        self._dtype = dtype
        self._local = threading.local()

    def get(self, elements: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < elements:
            buf = self._local.buf = np.empty(max(elements, 1), dtype=self._dtype)
        return buf


@register_kernel("conv2d")
def lower_conv2d(ctx: LowerContext) -> LoweredOp:
    """Bind weights (zeros for a missing bias), the epilogue, and pick a kernel for the shape."""
    require_nchw(ctx)
    op = ctx.node.op
    w = ctx.constant(1)
    o_ch, cg, kh, kw = w.shape
    b = ctx.constant(2)
    if b is None:
        b = np.zeros(o_ch, dtype=ctx.dtype)
    groups = op.groups
    og = o_ch // groups
    sh, sw = op.strides
    dh, dw = op.dilations
    pt, _, pl, _ = op.pads
    act = encode_activation(op.activation)
    algorithm = choose_algorithm(cg, kh, kw, og, groups)

    if algorithm in _UNFOLDED:
        kernel, scratch_size = _UNFOLDED[algorithm]
        wmat = np.ascontiguousarray(w.reshape(groups, og, cg * kh * kw))
        scratch = ThreadScratch(ctx.dtype)

        def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
            x = inputs[0]
            n, _, h, wd = x.shape
            oh, ow = out.shape[2], out.shape[3]
            work = scratch.get(scratch_size(n, groups, cg * kh * kw, og, oh * ow))
            kernel(x.reshape(n, groups, cg, h, wd), wmat, b, out.reshape(n, groups, og, oh * ow), work,
                   kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, *act)
            return out
    else:
        wb = np.ascontiguousarray(np.concatenate([w.reshape(-1), b.reshape(-1)]).astype(ctx.dtype))

        def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
            x = np.ascontiguousarray(inputs[0])
            n, c, h, wd = x.shape
            conv2d_direct(x.reshape(-1), wb, out.reshape(-1), n, c, h, wd, o_ch, cg, kh, kw, out.shape[2],
                          out.shape[3], sh, sw, dh, dw, pt, pl, *act)
            return out

    return LoweredOp(run=run, description=f"conv2d[{algorithm}] {o_ch}x{cg}x{kh}x{kw} groups={groups}",
                     work_per_element=cg * kh * kw)
