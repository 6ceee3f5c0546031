"""Pooling in the per-op mode (NCHW): max, average, global average, as parallel loops over the helpers that
generated code calls (``cg_kernels``: one implementation of each algorithm).

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

from keydnn.backends.numba_cpu.kernels.helpers import avg_pool_planes, max_pool_planes, mean_rows_flat
from keydnn.backends.numba_cpu.ops.lowering import (
    PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel, require_nchw,
)

__all__ = ["max_pool2d_kernel", "avg_pool2d_kernel", "global_avg_pool_kernel"]

logger = logging.getLogger(__name__)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def max_pool2d_kernel(x, out, planes, h, w, oh, ow, kh, kw, sh, sw, pt, pl):
    """Flat NCHW ``x`` -> ``out``: one (sample, channel) plane per task, through the generated code's helper."""
    for t in prange(planes):
        max_pool_planes(x, t * h * w, out, t * oh * ow, 1, h, w, oh, ow, kh, kw, sh, sw, pt, pl)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def avg_pool2d_kernel(x, out, planes, h, w, oh, ow, kh, kw, sh, sw, pt, pl):
    for t in prange(planes):
        avg_pool_planes(x, t * h * w, out, t * oh * ow, 1, h, w, oh, ow, kh, kw, sh, sw, pt, pl)


_ROWS = 64


@numba.njit(**PARALLEL_JIT_OPTIONS)
def global_avg_pool_kernel(x, out, rows, size):
    """Flat (rows, size) ``x`` -> ``out`` (rows,), in blocks of rows per task."""
    for blk in prange((rows + _ROWS - 1) // _ROWS):
        lo = blk * _ROWS
        mean_rows_flat(x, lo * size, out, lo, min(rows, lo + _ROWS) - lo, size)


def _lower_window(ctx: LowerContext, kernel) -> LoweredOp:
    require_nchw(ctx)
    op = ctx.node.op
    kh, kw = op.kernel
    sh, sw = op.strides
    pt, _, pl, _ = op.pads

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = np.ascontiguousarray(inputs[0])
        n, c, h, w = x.shape
        kernel(x.reshape(-1), out.reshape(-1), n * c, h, w, out.shape[2], out.shape[3], kh, kw, sh, sw, pt, pl)
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
        global_avg_pool_kernel(np.ascontiguousarray(x).reshape(-1), out.reshape(-1), n * c, h * w)
        return out

    _, _, h, w = ctx.in_types[0].shape
    window = h * w if isinstance(h, int) and isinstance(w, int) else 1
    return LoweredOp(run=run, description="global_avg_pool2d", work_per_element=window)
