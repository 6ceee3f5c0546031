"""Merge ops (the multi-operand ops of DAGs): add, sub, mul, avg, max, min with broadcasting, and concat.

An elementwise merge runs one pass per operand over the output: the first
copies its operand in (broadcast), each further one combines into it. Axes are
collapsed first (``broadcast.collapse_broadcast``), so the common cases are
short loops with a unit-stride or constant inner operand. ``avg`` scales by
``1/n`` in the last pass. ``max``/``min`` propagate NaN like NumPy.
concat copies each operand's rows into its slice of the output's rows, where a
row is everything from the concat axis on.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.broadcast import collapse_broadcast
from keydnn.backends.numba_cpu.codegen.codes import COPY, MERGE_CODES
from keydnn.backends.numba_cpu.kernels.helpers import combine
from keydnn.backends.numba_cpu.ops.lowering import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel
from keydnn.ir.ops.base import normalize_axis

__all__ = ["MERGE_CODES", "merge_pass", "concat_kernel", "combine"]

logger = logging.getLogger(__name__)



@numba.njit(**JIT_OPTIONS)
def merge_rows(out, x, dims, strides, lo, hi, code, scale):
    """Rows lo..hi of the collapsed output (all axes but the last) combined with operand ``x``."""
    rank = dims.size
    inner = dims[rank - 1]
    step = strides[rank - 1]
    for t in range(lo, hi):
        rem = t
        src = 0
        for k in range(rank - 2, -1, -1):
            src += (rem % dims[k]) * strides[k]
            rem //= dims[k]
        row = out[t * inner: (t + 1) * inner]
        if step == 1:
            seg = x[src: src + inner]
            for j in range(inner):
                row[j] = combine(row[j], seg[j], code) * scale
        else:
            v = x[src]
            for j in range(inner):
                row[j] = combine(row[j], v, code) * scale


@numba.njit(**JIT_OPTIONS)
def merge_flat(out, x, lo, hi, code, scale):
    """out[lo:hi] combined with x[lo:hi] (same shape)."""
    for j in range(lo, hi):
        out[j] = combine(out[j], x[j], code) * scale


_CHUNK = 1 << 14


@numba.njit(**PARALLEL_JIT_OPTIONS)
def merge_pass(out, x, dims, strides, code, scale):
    """One operand into the flat output; parallel over rows, or over chunks of one long row."""
    rank = dims.size
    inner = dims[rank - 1]
    rows = out.size // inner if inner else 0
    if rows == 1 and strides[rank - 1] == 1:
        for c in prange((inner + _CHUNK - 1) // _CHUNK):
            merge_flat(out, x, c * _CHUNK, min(inner, (c + 1) * _CHUNK), code, scale)
    else:
        per = max(1, _CHUNK // max(inner, 1))
        for blk in prange((rows + per - 1) // per):
            merge_rows(out, x, dims, strides, blk * per, min(rows, (blk + 1) * per), code, scale)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def concat_kernel(x, out, offset):
    """out (outer, total)[:, offset:offset + x.shape[1]] = x (outer, part)."""
    part = x.shape[1]
    for o in prange(x.shape[0]):
        src = x[o]
        dst = out[o, offset: offset + part]
        for j in range(part):
            dst[j] = src[j]


def merge_layout(out_shape: tuple[int, ...], shapes: Sequence[tuple[int, ...]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per operand: the collapsed output dims and its strides on them (int64 arrays)."""
    dims, strides = collapse_broadcast(out_shape, shapes)
    d = np.array(dims, dtype=np.int64)
    return [(d, np.array(s, dtype=np.int64)) for s in strides]


@register_kernel("add", "sub", "mul", "avg", "max", "min")
def lower_merge(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    code = MERGE_CODES[op.kind]
    n_ops = len(ctx.node.inputs)
    last_scale = 1.0 / n_ops if op.kind == "avg" else 1.0
    layouts: dict[tuple, list] = {}

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        key = tuple(a.shape for a in inputs)
        lay = layouts.get(key)
        if lay is None:
            lay = layouts[key] = merge_layout(out.shape, key)
        flat = out.reshape(-1)
        for k, (x, (dims, strides)) in enumerate(zip(inputs, lay)):
            merge_pass(flat, x.reshape(-1), dims, strides, COPY if k == 0 else code,
                       last_scale if k == n_ops - 1 else 1.0)
        return out

    return LoweredOp(run=run, inplace=True, description=f"{op.kind} x{n_ops}", work_per_element=n_ops)


@register_kernel("concat")
def lower_concat(ctx: LowerContext) -> LoweredOp:
    axis = normalize_axis(ctx.node.op.axis, ctx.out_type.rank)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        outer = math.prod(out.shape[:axis])
        out2 = out.reshape(outer, -1)
        offset = 0
        for x in inputs:
            part = x.reshape(outer, -1)
            concat_kernel(part, out2, offset)
            offset += part.shape[1]
        return out

    return LoweredOp(run=run, description=f"concat axis={axis} x{len(ctx.node.inputs)}")
