"""Merge ops: add, sub, mul, avg, max, min (broadcast, any number of operands) and concat (any axis).

Each is one launch of one kernel, one thread per output element, that reads
every operand in the same pass. The operands reach the kernel as one tuple of
flat device arrays, so a kernel compiles once per dtype, op and operand
count, never once per shape or rank:

* elementwise merges: the operands' broadcast is collapsed first (adjacent
  axes along which every operand is either present or broadcast merge into
  one: (N, C, H, W) * (N, C, 1, 1) is a rank-2 loop), and operand k is read at
  ``sum_a coord_a * stride_k[a]``, stride 0 where it broadcasts. An operand of
  the output's full shape is read at the output index itself, with no index
  arithmetic (both sides of a residual add). The geometry is uploaded once
  per input shape, never per call. Every element is read from all operands
  before it is written, so the result may overwrite operand 0 when that dies
  here (``inplace``). ``max``/``min`` propagate NaN like NumPy, the reference
  interpreter and numba-cpu; ``avg`` sums left to right and scales by ``1/n``.
* concat: the output is viewed as (outer, row), a row being everything from
  the concat axis on; operand k fills columns ``[offset_k, offset_k+1)`` of
  every row. The offsets travel as a tuple beside the operands' tuple.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Sequence

import numpy as np

from keydnn.backends.broadcast import collapse_broadcast
from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, grid_1d, register_kernel,
)
from keydnn.ir.ops.base import normalize_axis

__all__ = ["MERGE_CODES", "merge_geometry", "lower_merge", "lower_concat"]

logger = logging.getLogger(__name__)

ADD, SUB, MUL, AVG, MAX, MIN = 0, 1, 2, 3, 4, 5
#: Merge op kind -> kernel code (compiled into the kernel, like the activation codes).
MERGE_CODES: dict[str, int] = {"add": ADD, "sub": SUB, "mul": MUL, "avg": AVG, "max": MAX, "min": MIN}


@cuda.jit(device=True)
def _source(t, geom, n, rank, k):  # pragma: no cover - device code
    """Flat index in operand k of output element t (``geom`` as laid out by ``merge_geometry``)."""
    rem = t
    src = 0
    base = n + rank * (k + 1)
    for a in range(rank - 1, -1, -1):
        d = geom[n + a]
        q = rem // d
        src += (rem - q * d) * geom[base + a]
        rem = q
    return src


@functools.lru_cache(maxsize=None)
def _merge_kernel(dtype_name: str, code: int) -> Callable:
    """``merge(xs, out, size, geom, rank, scale)`` for one op ``code``; ``scale`` is read by avg only."""

    @cuda.jit(device=True)
    def combine(d, v):  # pragma: no cover - device code
        if code == SUB:
            return d - v
        if code == MUL:
            return d * v
        if code == MAX:
            return v if (v > d) or (v != v) else d
        if code == MIN:
            return v if (v < d) or (v != v) else d
        return d + v  # add, avg

    @cuda.jit
    def merge(xs, out, size, geom, rank, scale):  # pragma: no cover - device code
        n = len(xs)
        for t in range(cuda.grid(1), size, cuda.gridsize(1)):
            acc = xs[0][t if geom[0] else _source(t, geom, n, rank, 0)]
            for k in range(1, n):
                acc = combine(acc, xs[k][t if geom[k] else _source(t, geom, n, rank, k)])
            if code == AVG:
                acc = acc * scale
            out[t] = acc

    return merge


@cuda.jit
def concat_kernel(xs, out, total, row, offsets):  # pragma: no cover - device code
    """``offsets`` (n + 1 entries) split each output row among the n operands."""
    n = len(xs)
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        o = t // row
        c = t - o * row
        k = 0
        while k < n - 1 and c >= offsets[k + 1]:
            k += 1
        start = offsets[k]
        out[t] = xs[k][o * (offsets[k + 1] - start) + c - start]


def merge_geometry(out_shape: Shape, shapes: Sequence[Shape]) -> tuple[np.ndarray, int]:
    """(geom, rank): per operand a full-shape flag, the collapsed output dims, per operand its strides on them.

    ``geom`` is ``[full_0 .. full_n-1, dims (rank), strides_0 (rank), .., strides_n-1 (rank)]`` in int64.
    """
    dims, strides = collapse_broadcast(out_shape, shapes)
    full = [int(tuple(s) == tuple(out_shape)) for s in shapes]
    geom = np.array(full + list(dims) + [v for st in strides for v in st], dtype=np.int64)
    return geom, len(dims)


@register_kernel("add", "sub", "mul", "avg", "max", "min")
def lower_merge(ctx: LowerContext) -> LoweredOp:
    """All operands in one pass, broadcast by strides; may write over operand 0 when that dies here."""
    kind = ctx.node.op.kind
    n_ops = len(ctx.node.inputs)
    kernel_of = _merge_kernel(ctx.dtype.name, MERGE_CODES[kind])
    scale = ctx.scalar(1.0 / n_ops)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        size = math.prod(out_shape)
        geom, rank = merge_geometry(out_shape, in_shapes)
        geom_dev = cuda.to_device(geom)  # once per input shape, kept by the launch
        kernel = configure(kernel_of, grid_1d(size), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if size:
                kernel(tuple(inputs), out, size, geom_dev, rank, scale)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, inplace=True, description=f"{kind} x{n_ops}")


@register_kernel("concat")
def lower_concat(ctx: LowerContext) -> LoweredOp:
    """One gather over the output; each thread finds its operand among the row offsets."""
    axis = normalize_axis(ctx.node.op.axis, ctx.out_type.rank)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        total = math.prod(out_shape)
        outer = math.prod(out_shape[:axis])
        row = total // outer if outer else 0
        parts = [math.prod(s[axis:]) for s in in_shapes]
        offsets = tuple(int(v) for v in np.concatenate([[0], np.cumsum(parts)]))
        kernel = configure(concat_kernel, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if total:
                kernel(tuple(inputs), out, total, row, offsets)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=f"concat axis={axis} x{len(ctx.node.inputs)}")
