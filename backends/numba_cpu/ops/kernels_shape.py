"""Data-movement ops: flatten, reshape, expand_dims and squeeze are free views; transpose gathers.

Every buffer the executor hands out is C-contiguous, so a row-major reshape
never copies. Transpose is the one op here that moves bytes.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.kernels.helpers import transpose_flat
from keydnn.backends.numba_cpu.ops.lowering import PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel

__all__ = ["transpose_kernel"]

logger = logging.getLogger(__name__)


_ROWS = 64


@numba.njit(**PARALLEL_JIT_OPTIONS)
def transpose_kernel(x, out, table, rank, rows):
    """Any-rank permutation on flat arrays, blocks of innermost rows per task, through the generated code's
    helper: ``table`` holds the output shape, then the input stride of each output axis."""
    for blk in prange((rows + _ROWS - 1) // _ROWS):
        transpose_flat(x, 0, out, 0, table, 0, rank, rank, blk * _ROWS, (blk + 1) * _ROWS)


@register_kernel("flatten")
def lower_flatten(ctx: LowerContext) -> LoweredOp:
    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        return inputs[0].reshape(inputs[0].shape[0], -1)

    return LoweredOp(run=run, allocates=False, description="flatten (view)")


@register_kernel("reshape")
def lower_reshape(ctx: LowerContext) -> LoweredOp:
    target = tuple(ctx.node.op.shape)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        return inputs[0].reshape((inputs[0].shape[0],) + target)

    return LoweredOp(run=run, allocates=False, description=f"reshape {list(target)} (view)")


@register_kernel("expand_dims", "squeeze")
def lower_expand_squeeze(ctx: LowerContext) -> LoweredOp:
    """Adding or removing a size-1 axis never moves data: a reshape to the result's type."""
    op = ctx.node.op
    axis = op.axis
    grow = op.kind == "expand_dims"

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        shape = inputs[0].shape
        new = shape[:axis] + (1,) + shape[axis:] if grow else shape[:axis] + shape[axis + 1:]
        return inputs[0].reshape(new)

    return LoweredOp(run=run, allocates=False, description=f"{op.kind} axis={axis} (view)")


@register_kernel("transpose")
def lower_transpose(ctx: LowerContext) -> LoweredOp:
    perm = tuple(ctx.node.op.perm)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = np.ascontiguousarray(inputs[0])
        strides = np.array(x.strides, dtype=np.int64) // x.itemsize
        table = np.concatenate([np.array(out.shape, dtype=np.int64), strides[list(perm)]])
        if out.size:
            transpose_kernel(x.reshape(-1), out.reshape(-1), table, len(perm), out.size // out.shape[-1])
        return out

    return LoweredOp(run=run, description=f"transpose {list(perm)}")
