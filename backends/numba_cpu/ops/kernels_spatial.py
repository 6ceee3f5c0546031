"""Weightless spatial kernels: pad2d, crop2d, upsample2d (nearest), global_max_pool2d.

pad, crop and upsample only move pixels, so both layouts run one kernel on an
``(A, H, W, B)`` view: NCHW is ``(N*C, H, W, 1)``, NHWC is ``(N, H, W, C)``.
The ops carry their layout, and these are cheap enough that refusing NHWC
(as the compute kernels do) would buy nothing. The loops are the generated code's helpers
(``cg_kernels``), run one plane per task.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.kernels.helpers import crop_flat, max_cols_flat, max_rows_flat, pad_flat, upsample_flat
from keydnn.backends.numba_cpu.ops.lowering import PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel

__all__ = ["pad_kernel", "crop_kernel", "upsample_kernel", "global_max_pool_kernel"]

logger = logging.getLogger(__name__)


def _flat(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(-1)


def _ahwb(shape: Sequence[int], layout: str) -> tuple[int, int, int, int]:
    n, a, b, c = shape
    return (n * a, b, c, 1) if layout == "NCHW" else (n, a, b, c)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def pad_kernel(x, out, planes, h, wb, oh, owb, top, left, value):
    """Flat (A, H, W*B) -> (A, OH, OW*B) planes placed at (top, left), ``value`` elsewhere; one plane per task."""
    for a in prange(planes):
        pad_flat(x, a * h * wb, out, a * oh * owb, 1, h, wb, oh, owb, top, left, value)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def crop_kernel(x, out, planes, h, wb, oh, owb, top, left):
    """Flat (A, OH, OW*B) = (A, H, W*B)[:, top:top+OH, left:left+OW*B]."""
    for a in prange(planes):
        crop_flat(x, a * h * wb, out, a * oh * owb, 1, h, wb, oh, owb, top, left)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def upsample_kernel(x, out, planes, h, w, b, fh, fw):
    """Nearest-neighbour repeat of flat (A, H, W, B) planes by (fh, fw)."""
    for a in prange(planes):
        upsample_flat(x, a * h * w * b, out, a * h * fh * w * fw * b, 1, h, w, b, fh, fw)


_ROWS = 64


@numba.njit(**PARALLEL_JIT_OPTIONS)
def global_max_pool_kernel(x, out, n, k, c):
    """Flat (N, K, C) -> (N, C): max over K (NaN propagates). NCHW reads (N*C, H*W, 1), NHWC (N, H*W, C)."""
    if c == 1:
        for blk in prange((n + _ROWS - 1) // _ROWS):
            lo = blk * _ROWS
            max_rows_flat(x, lo * k, out, lo, min(n, lo + _ROWS) - lo, k)
    else:
        for s in prange(n):
            max_cols_flat(x, s * k * c, out, s * c, k, c)


@register_kernel("pad2d")
def lower_pad2d(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    top, _, left, _ = op.pads
    value = float(op.value)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        a, h, w, b = _ahwb(inputs[0].shape, op.layout)
        _, oh, ow, _ = _ahwb(out.shape, op.layout)
        pad_kernel(_flat(inputs[0]), out.reshape(-1), a, h, w * b, oh, ow * b, top, left * b, value)
        return out

    return LoweredOp(run=run, description=f"pad2d {list(op.pads)}")


@register_kernel("crop2d")
def lower_crop2d(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    top, _, left, _ = op.crops

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        a, h, w, b = _ahwb(inputs[0].shape, op.layout)
        _, oh, ow, _ = _ahwb(out.shape, op.layout)
        crop_kernel(_flat(inputs[0]), out.reshape(-1), a, h, w * b, oh, ow * b, top, left * b)
        return out

    return LoweredOp(run=run, description=f"crop2d {list(op.crops)}")


@register_kernel("upsample2d")
def lower_upsample2d(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    fh, fw = op.factors

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        upsample_kernel(_flat(inputs[0]), out.reshape(-1), *_ahwb(inputs[0].shape, op.layout), fh, fw)
        return out

    return LoweredOp(run=run, description=f"upsample2d {fh}x{fw}")


@register_kernel("global_max_pool2d")
def lower_global_max_pool2d(ctx: LowerContext) -> LoweredOp:
    """Both keepdims forms have the same N*C elements; the layout picks rows or columns."""
    op = ctx.node.op

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        a, h, w, b = _ahwb(inputs[0].shape, op.layout)
        global_max_pool_kernel(_flat(inputs[0]), out.reshape(-1), a, h * w, b)
        return out

    shape = ctx.in_types[0].shape
    spatial = shape[2:] if op.layout == "NCHW" else shape[1:3]
    window = spatial[0] * spatial[1] if all(isinstance(d, int) for d in spatial) else 1
    return LoweredOp(run=run, description="global_max_pool2d", work_per_element=window)
