"""Pooling kernels (NCHW): max, average, global average.

Windows are clipped to the input instead of padding it, which gives both
padding rules for free: a padded position never wins a max (it acts as
-inf), and is not counted by an average (Keras 'same' semantics).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.lowering import (
    JIT_OPTIONS, PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel, require_nchw,
)

__all__ = ["max_pool2d_kernel", "avg_pool2d_kernel", "global_avg_pool_kernel"]

logger = logging.getLogger(__name__)


@numba.njit(**JIT_OPTIONS)
def max_plane(xin, plane, kh, kw, sh, sw, pt, pl):
    """Max over the part of each window inside the input; NaN propagates like NumPy's max."""
    h, wd = xin.shape
    oh, ow = plane.shape
    for i in range(oh):
        h0 = i * sh - pt
        h_lo, h_hi = max(h0, 0), min(h0 + kh, h)
        for j in range(ow):
            w0 = j * sw - pl
            w_lo, w_hi = max(w0, 0), min(w0 + kw, wd)
            m = xin[h_lo, w_lo]
            for ih in range(h_lo, h_hi):
                for iw in range(w_lo, w_hi):
                    v = xin[ih, iw]
                    if v > m or v != v:
                        m = v
            plane[i, j] = m


@numba.njit(**JIT_OPTIONS)
def avg_plane(xin, plane, kh, kw, sh, sw, pt, pl):
    """Mean over the part of each window inside the input (padding not counted); float64 sums."""
    h, wd = xin.shape
    oh, ow = plane.shape
    for i in range(oh):
        h0 = i * sh - pt
        h_lo, h_hi = max(h0, 0), min(h0 + kh, h)
        for j in range(ow):
            w0 = j * sw - pl
            w_lo, w_hi = max(w0, 0), min(w0 + kw, wd)
            s = 0.0
            for ih in range(h_lo, h_hi):
                for iw in range(w_lo, w_hi):
                    s += xin[ih, iw]
            plane[i, j] = s / ((h_hi - h_lo) * (w_hi - w_lo))


@numba.njit(**PARALLEL_JIT_OPTIONS)
def max_pool2d_kernel(x, out, kh, kw, sh, sw, pt, pl):
    """One (sample, channel) plane per task (the loops live in a serial helper, which numba optimizes better)."""
    channels = x.shape[1]
    for t in prange(x.shape[0] * channels):
        n = t // channels
        c = t - n * channels
        max_plane(x[n, c], out[n, c], kh, kw, sh, sw, pt, pl)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def avg_pool2d_kernel(x, out, kh, kw, sh, sw, pt, pl):
    channels = x.shape[1]
    for t in prange(x.shape[0] * channels):
        n = t // channels
        c = t - n * channels
        avg_plane(x[n, c], out[n, c], kh, kw, sh, sw, pt, pl)


@numba.njit(**JIT_OPTIONS)
def mean_rows(x, out, lo, hi):
    """out[r] = mean(x[r]) for rows lo..hi, summed in float64."""
    size = x.shape[1]
    for r in range(lo, hi):
        s = 0.0
        xr = x[r]
        for k in range(size):
            s += xr[k]
        out[r] = s / size


_ROWS = 64


@numba.njit(**PARALLEL_JIT_OPTIONS)
def global_avg_pool_kernel(x, out):
    """x (rows, H*W) -> out (rows,), in blocks of rows per task."""
    rows = x.shape[0]
    for blk in prange((rows + _ROWS - 1) // _ROWS):
        mean_rows(x, out, blk * _ROWS, min(rows, (blk + 1) * _ROWS))


def _lower_window(ctx: LowerContext, kernel) -> LoweredOp:
    require_nchw(ctx)
    op = ctx.node.op
    kh, kw = op.kernel
    sh, sw = op.strides
    pt, _, pl, _ = op.pads

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        kernel(inputs[0], out, kh, kw, sh, sw, pt, pl)
        return out

    return LoweredOp(run=run, description=f"{op.kind} {kh}x{kw}/{sh}x{sw}")


@register_kernel("max_pool2d")
def lower_max_pool2d(ctx: LowerContext) -> LoweredOp:
    return _lower_window(ctx, max_pool2d_kernel)


@register_kernel("avg_pool2d")
def lower_avg_pool2d(ctx: LowerContext) -> LoweredOp:
    return _lower_window(ctx, avg_pool2d_kernel)


@register_kernel("global_avg_pool2d")
def lower_global_avg_pool2d(ctx: LowerContext) -> LoweredOp:
    """Both keepdims forms have the same (N*C) elements, so one flat kernel serves them."""
    require_nchw(ctx)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        n, c, h, w = x.shape
        global_avg_pool_kernel(x.reshape(n * c, h * w), out.reshape(n * c))
        return out

    return LoweredOp(run=run, description="global_avg_pool2d")
