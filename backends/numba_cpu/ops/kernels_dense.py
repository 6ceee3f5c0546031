"""dense kernel: ``x @ W + b`` over the last axis with the fused epilogue.

The matrix product goes to BLAS (``np.dot`` inside njit); bias and activation
follow in one pass per row while the row is in cache.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.ops.kernels_elementwise import LINEAR, activate_range, encode_activation
from keydnn.backends.numba_cpu.ops.lowering import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel

__all__ = ["dense_kernel"]

logger = logging.getLogger(__name__)


@numba.njit(**JIT_OPTIONS)
def bias_act_rows(out, b, lo, hi, code, p0, p1, p2, p3):
    cols = out.shape[1]
    for i in range(lo, hi):
        r = out[i]
        for j in range(cols):
            r[j] += b[j]
        if code != LINEAR:
            activate_range(r, r, 0, cols, code, p0, p1, p2, p3)


_ROWS = 16


@numba.njit(**PARALLEL_JIT_OPTIONS)
def dense_kernel(x, w, b, out, code, p0, p1, p2, p3):
    """x (M, K) @ w (K, N) + b (N,) -> out (M, N), then the epilogue, in blocks of rows."""
    np.dot(x, w, out)
    rows = out.shape[0]
    for blk in prange((rows + _ROWS - 1) // _ROWS):
        bias_act_rows(out, b, blk * _ROWS, min(rows, (blk + 1) * _ROWS), code, p0, p1, p2, p3)


@register_kernel("dense")
def lower_dense(ctx: LowerContext) -> LoweredOp:
    """Leading axes fold into the GEMM's rows, so any rank >= 2 uses one kernel."""
    w = ctx.constant(1)
    k, n = w.shape
    b = ctx.constant(2)
    if b is None:
        b = np.zeros(n, dtype=ctx.dtype)
    act = encode_activation(ctx.node.op.activation)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        rows = math.prod(x.shape[:-1])
        dense_kernel(x.reshape(rows, k), w, b, out.reshape(rows, n), *act)
        return out

    return LoweredOp(run=run, description=f"dense {k}->{n}", work_per_element=k)
