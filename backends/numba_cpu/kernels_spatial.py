"""Weightless spatial kernels: pad2d, crop2d, upsample2d (nearest), global_max_pool2d.

pad, crop and upsample only move pixels, so both layouts run one kernel on an
``(A, H, W, B)`` view: NCHW is ``(N*C, H, W, 1)``, NHWC is ``(N, H, W, C)``.
The ops carry their layout, and these are cheap enough that refusing NHWC
(as the compute kernels do) would buy nothing.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.lowering import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel

__all__ = ["pad_kernel", "crop_kernel", "upsample_kernel", "global_max_pool_kernel", "max_rows"]

logger = logging.getLogger(__name__)


def _ahwb(shape: Sequence[int], layout: str) -> tuple[int, int, int, int]:
    n, a, b, c = shape
    return (n * a, b, c, 1) if layout == "NCHW" else (n, a, b, c)


@numba.njit(**JIT_OPTIONS)
def pad_plane(x, out, top, left, value):
    """out (OH, OW*B) = x (H, W*B) placed at (top, left*B), ``value`` elsewhere (rows of B-vectors)."""
    h, wb = x.shape
    oh, owb = out.shape
    for i in range(oh):
        row = out[i]
        si = i - top
        if si < 0 or si >= h:
            for j in range(owb):
                row[j] = value
            continue
        for j in range(left):
            row[j] = value
        src = x[si]
        for j in range(wb):
            row[left + j] = src[j]
        for j in range(left + wb, owb):
            row[j] = value


@numba.njit(**PARALLEL_JIT_OPTIONS)
def pad_kernel(x, out, top, left, value):
    """x (A, H, W*B) -> out (A, OH, OW*B); ``left`` counts elements (pixels * B)."""
    for a in prange(x.shape[0]):
        pad_plane(x[a], out[a], top, left, value)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def crop_kernel(x, out, top, left):
    """out (A, OH, OW*B) = x (A, H, W*B)[:, top:top+OH, left:left+OW*B]."""
    oh, owb = out.shape[1], out.shape[2]
    for a in prange(x.shape[0]):
        for i in range(oh):
            src = x[a, top + i]
            dst = out[a, i]
            for j in range(owb):
                dst[j] = src[left + j]


@numba.njit(**JIT_OPTIONS)
def upsample_plane(x, out, fh, fw):
    h, w, b = x.shape
    for i in range(h):
        for r in range(fh):
            dst = out[i * fh + r]
            for j in range(w):
                src = x[i, j]
                for f in range(fw):
                    d = dst[j * fw + f]
                    for k in range(b):
                        d[k] = src[k]


@numba.njit(**PARALLEL_JIT_OPTIONS)
def upsample_kernel(x, out, fh, fw):
    """Nearest-neighbour repeat: out (A, H*fh, W*fw, B)[a, i, j] = x[a, i // fh, j // fw]."""
    for a in prange(x.shape[0]):
        upsample_plane(x[a], out[a], fh, fw)


@numba.njit(**JIT_OPTIONS)
def max_rows(x, out, lo, hi):
    """out[r] = max(x[r]) for rows lo..hi of x (rows, K); NaN propagates like NumPy's max."""
    size = x.shape[1]
    for r in range(lo, hi):
        xr = x[r]
        m = xr[0]
        for k in range(1, size):
            v = xr[k]
            m = v if (v > m) | (v != v) else m
            if m != m:
                break
        out[r] = m


@numba.njit(**JIT_OPTIONS)
def max_cols(x, out):
    """out[c] = max over k of x[k, c] (x (K, C)); NaN propagates."""
    size, cols = x.shape
    for c in range(cols):
        out[c] = x[0, c]
    for k in range(1, size):
        xr = x[k]
        for c in range(cols):
            v = xr[c]
            m = out[c]
            out[c] = v if (v > m) | (v != v) else m


_ROWS = 64


@numba.njit(**PARALLEL_JIT_OPTIONS)
def global_max_pool_kernel(x, out):
    """x (N, K, C) -> out (N, C): max over K. NCHW reads (N*C, H*W, 1), NHWC (N, H*W, C)."""
    n, _, c = x.shape
    if c == 1:
        x2 = x.reshape(n, x.shape[1])
        o1 = out.reshape(n)
        for blk in prange((n + _ROWS - 1) // _ROWS):
            max_rows(x2, o1, blk * _ROWS, min(n, (blk + 1) * _ROWS))
    else:
        for s in prange(n):
            max_cols(x[s], out[s])


@register_kernel("pad2d")
def lower_pad2d(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    top, _, left, _ = op.pads
    value = float(op.value)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        a, h, w, b = _ahwb(inputs[0].shape, op.layout)
        _, oh, ow, _ = _ahwb(out.shape, op.layout)
        pad_kernel(inputs[0].reshape(a, h, w * b), out.reshape(a, oh, ow * b), top, left * b, value)
        return out

    return LoweredOp(run=run, description=f"pad2d {list(op.pads)}")


@register_kernel("crop2d")
def lower_crop2d(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    top, _, left, _ = op.crops

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        a, h, w, b = _ahwb(inputs[0].shape, op.layout)
        _, oh, ow, _ = _ahwb(out.shape, op.layout)
        crop_kernel(inputs[0].reshape(a, h, w * b), out.reshape(a, oh, ow * b), top, left * b)
        return out

    return LoweredOp(run=run, description=f"crop2d {list(op.crops)}")


@register_kernel("upsample2d")
def lower_upsample2d(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    fh, fw = op.factors

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        dims = _ahwb(inputs[0].shape, op.layout)
        upsample_kernel(inputs[0].reshape(dims), out.reshape(_ahwb(out.shape, op.layout)), fh, fw)
        return out

    return LoweredOp(run=run, description=f"upsample2d {fh}x{fw}")


@register_kernel("global_max_pool2d")
def lower_global_max_pool2d(ctx: LowerContext) -> LoweredOp:
    """Both keepdims forms have the same N*C elements; the layout picks rows or columns."""
    op = ctx.node.op

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        a, h, w, b = _ahwb(inputs[0].shape, op.layout)
        global_max_pool_kernel(inputs[0].reshape(a, h * w, b), out.reshape(a, b))
        return out

    shape = ctx.in_types[0].shape
    spatial = shape[2:] if op.layout == "NCHW" else shape[1:3]
    window = spatial[0] * spatial[1] if all(isinstance(d, int) for d in spatial) else 1
    return LoweredOp(run=run, description="global_max_pool2d", work_per_element=window)
