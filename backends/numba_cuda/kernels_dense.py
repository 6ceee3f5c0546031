"""dense: ``x @ W + b`` and the fused epilogue, on the tiled GEMM template.

Rows are every leading axis of ``x`` folded together (so any rank >= 2 is one
GEMM), columns the units. A small batch picks the skinny 8x32 tile and, when
its few tiles cannot fill the GPU, split-K (see ``keydnn.backends.numba_cuda.gemm``).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from keydnn.backends.numba_cuda.activations import epilogue_for
from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.gemm import (
    GemmOperands, choose_splits, choose_tile, gemm_grid, launch_reduce, make_gemm, split_chunk,
)
from keydnn.backends.numba_cuda.lowering import LowerContext, LoweredOp, Prepared, Shape, configure, register_kernel

__all__ = ["lower_dense"]

logger = logging.getLogger(__name__)

# geom = (K, N)


@cuda.jit(device=True)
def _x_index(geom, g, m, k):  # pragma: no cover - device code
    return m * geom[0] + k


@cuda.jit(device=True)
def _w_index(geom, g, k, n):  # pragma: no cover - device code
    return k * geom[1] + n


@cuda.jit(device=True)
def _out_index(geom, g, m, n):  # pragma: no cover - device code
    return m * geom[1] + n


@cuda.jit(device=True)
def _bias_index(geom, g, m, n):  # pragma: no cover - device code
    return n


_OPERANDS = GemmOperands(a_index=_x_index, b_index=_w_index, out_index=_out_index, bias_index=_bias_index,
                         a_k_fast=True)


@register_kernel("dense")
def lower_dense(ctx: LowerContext) -> LoweredOp:
    """Upload W (in, out) as is (B tile loads are coalesced along units) and the bias (zeros when absent)."""
    w = ctx.constant(1)
    k_size, units = w.shape
    w_dev = ctx.upload(w)
    b = ctx.constant(2)
    bias = ctx.upload(np.zeros(units, dtype=ctx.dtype) if b is None else b)
    epilogue = epilogue_for(ctx.node.op.activation, ctx.dtype)
    dtype_name = ctx.dtype.name
    geom = (k_size, units)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        rows = math.prod(in_shapes[0][:-1])
        tile = choose_tile(rows)
        grid, _ = gemm_grid(rows, units, 1, 1, tile)
        splits = choose_splits(grid[0] * grid[1], k_size, tile)
        chunk = split_chunk(k_size, splits, tile)
        grid, block = gemm_grid(rows, units, 1, splits, tile)
        kernel = configure(make_gemm(_OPERANDS, tile, dtype_name, epilogue.code), grid, block)
        size = rows * units

        def launch(inputs: Sequence, out, scratch):
            target = out if splits == 1 else scratch  # split-K: partial sums, then the reduce's epilogue
            kernel(inputs[0], w_dev, bias, target, geom, rows, units, k_size, splits, chunk, size,
                        *epilogue.params)
            if splits > 1:
                launch_reduce(dtype_name, scratch, out, bias, size, splits, 1, units, epilogue)
            return out

        return Prepared(launch, scratch=size * splits if splits > 1 else 0)

    return LoweredOp(prepare=prepare, description=f"dense {k_size}->{units}")
