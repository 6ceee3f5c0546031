"""conv2d lowering: bind weights and epilogue, pick direct loops or im2col + GEMM by shape.

Both kernels take a private weight copy, a bias that is zeros when the op has
none, and apply the fused epilogue while the output is still in cache.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional, Sequence

import numpy as np

from keydnn.backends.numba_cpu.conv_direct import conv2d_direct
from keydnn.backends.numba_cpu.conv_gemm import blas_scratch, conv2d_blas, conv2d_im2col, im2col_scratch
from keydnn.backends.numba_cpu.kernels_elementwise import encode_activation
from keydnn.backends.numba_cpu.lowering import LowerContext, LoweredOp, register_kernel, require_nchw

__all__ = ["choose_algorithm", "lower_conv2d", "FORCE_ALGORITHM", "ThreadScratch"]

logger = logging.getLogger(__name__)

#: Tests set this to "direct" or "gemm" to exercise one kernel on every shape.
FORCE_ALGORITHM: Optional[str] = None


def choose_algorithm(cg: int, kh: int, kw: int, og: int) -> str:
    """GEMM wherever a filter mixes channels: even a 1-channel 3x3 conv runs faster as im2col + BLAS.

    Depthwise filters (one input channel, few outputs per group) make a
    degenerate GEMM per channel, so they take the direct loops.
    """
    if FORCE_ALGORITHM is not None:
        return FORCE_ALGORITHM
    return "direct" if cg * og < 8 else "gemm"


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
    algorithm = choose_algorithm(cg, kh, kw, og)

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

        def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
            conv2d_direct(inputs[0], w, b, out, sh, sw, dh, dw, pt, pl, *act)
            return out

    return LoweredOp(run=run, description=f"conv2d[{algorithm}] {o_ch}x{cg}x{kh}x{kw} groups={groups}")
