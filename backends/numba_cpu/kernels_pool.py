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

from keydnn.backends.numba_cpu.conv_direct import tap_hi, tap_lo
from keydnn.backends.numba_cpu.lowering import (
    JIT_OPTIONS, PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel, require_nchw,
)

__all__ = ["max_pool2d_kernel", "avg_pool2d_kernel", "global_avg_pool_kernel"]

logger = logging.getLogger(__name__)


@numba.njit(**JIT_OPTIONS)
def max_plane(xin, plane, kh, kw, sh, sw, pt, pl):
    """Max over the part of each window inside the input, one window tap at a time along
    output rows (long loops); NaN propagates like NumPy's max."""
    h, wd = xin.shape
    oh, ow = plane.shape
    for i in range(oh):
        prow = plane[i]
        for j in range(ow):
            prow[j] = -np.inf
        for ki in range(kh):
            ih = i * sh + ki - pt
            if ih < 0 or ih >= h:
                continue
            for kj in range(kw):
                off_w = kj - pl
                j_lo, j_hi = tap_lo(off_w, sw), tap_hi(off_w, sw, wd, ow)
                if j_hi <= j_lo:
                    continue
                dst = prow[j_lo:j_hi]
                src = xin[ih, j_lo * sw + off_w:]
                for j in range(dst.size):  # branch-free select: random data defeats branch prediction
                    v = src[j * sw]
                    d = dst[j]
                    dst[j] = v if (v > d) | (v != v) else d


@numba.njit(**JIT_OPTIONS)
def avg_plane(xin, plane, kh, kw, sh, sw, pt, pl):
    """Mean over the part of each window inside the input (padding not counted), tap by tap."""
    h, wd = xin.shape
    oh, ow = plane.shape
    for i in range(oh):
        prow = plane[i]
        for j in range(ow):
            prow[j] = 0.0
        h0 = i * sh - pt
        rows = min(h0 + kh, h) - max(h0, 0)
        for ki in range(kh):
            ih = h0 + ki
            if ih < 0 or ih >= h:
                continue
            for kj in range(kw):
                off_w = kj - pl
                j_lo, j_hi = tap_lo(off_w, sw), tap_hi(off_w, sw, wd, ow)
                if j_hi <= j_lo:
                    continue
                dst = prow[j_lo:j_hi]
                src = xin[ih, j_lo * sw + off_w:]
                for j in range(dst.size):
                    dst[j] += src[j * sw]
        for j in range(ow):
            w0 = j * sw - pl
            prow[j] /= rows * (min(w0 + kw, wd) - max(w0, 0))


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

    return LoweredOp(run=run, description=f"{op.kind} {kh}x{kw}/{sh}x{sw}", work_per_element=kh * kw)


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

    _, _, h, w = ctx.in_types[0].shape
    window = h * w if isinstance(h, int) and isinstance(w, int) else 1
    return LoweredOp(run=run, description="global_avg_pool2d", work_per_element=window)
