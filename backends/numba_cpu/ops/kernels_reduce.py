"""Per-op kernels of the reducing ops: ``layer_norm`` (every normalizing layer) and ``reduce``.

Both walk the two index tables of ``keydnn.ir.ops.reduce.reduction_tables``
(one offset per lane, one per reduced element), built once per input shape,
so one compiled kernel per dtype serves every axis set and layout. Sums are
float64; a lane's elements are read twice (statistics, then the output), which
is what a normalization over a few hundred features costs anyway.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.ops.lowering import PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel
from keydnn.ir.ops.reduce import norm_axes, reduction_tables

__all__ = ["layer_norm_kernel", "reduce_kernel", "STATISTICS", "REDUCE_MODES"]

#: ``LayerNorm.statistic`` and ``Reduce.mode`` as the integer codes the kernels take.
STATISTICS = {"variance": 0, "mean_square": 1, "sum_square": 2}
REDUCE_MODES = {"mean": 0, "sum": 1, "max": 2, "min": 3}


@numba.njit(**PARALLEL_JIT_OPTIONS)
def layer_norm_kernel(x, out, lane_base, red_off, gamma, beta, eps, center, stat, eps_max):
    """One lane per task; ``out`` may be ``x`` (each lane reads its elements before writing them)."""
    length = red_off.size
    for t in prange(lane_base.size):
        b = lane_base[t]
        mean = 0.0
        for k in range(length):
            mean += np.float64(x[b + red_off[k]])
        mean /= length
        s = 0.0
        if stat == 0:
            for k in range(length):
                d = np.float64(x[b + red_off[k]]) - mean
                s += d * d
            s /= length
        else:
            for k in range(length):
                v = np.float64(x[b + red_off[k]])
                s += v * v
            if stat == 1:
                s /= length
        s = max(s, eps) if eps_max else s + eps
        inv = 1.0 / math.sqrt(s)
        c = mean if center else 0.0
        for k in range(length):
            i = b + red_off[k]
            out[i] = (np.float64(x[i]) - c) * inv * gamma[k] + beta[k]


@numba.njit(**PARALLEL_JIT_OPTIONS)
def reduce_kernel(x, out, lane_base, red_off, mode):
    """out[t] = mean/sum/max/min of lane t's elements (float64 sums)."""
    length = red_off.size
    for t in prange(lane_base.size):
        b = lane_base[t]
        if mode <= 1:
            s = 0.0
            for k in range(length):
                s += np.float64(x[b + red_off[k]])
            out[t] = s / length if mode == 0 else s
        else:
            m = np.float64(x[b])
            for k in range(1, length):
                v = np.float64(x[b + red_off[k]])
                if (mode == 2 and v > m) or (mode == 3 and v < m) or v != v:
                    m = v
            out[t] = m


class TableCache:
    """Index tables per input shape (a model sees few shapes; each is built once)."""

    def __init__(self, axes: tuple[int, ...]) -> None:
        self.axes = axes
        self._tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        tables = self._tables.get(shape)
        if tables is None:
            tables = self._tables[shape] = reduction_tables(shape, norm_axes(self.axes, len(shape)))
        return tables


def per_element(param: np.ndarray, sample: tuple[int, ...], red_off: np.ndarray) -> np.ndarray:
    """A scalar or sample-shaped parameter that varies only along the reduced axes, as one value per
    reduced element (``red_off`` order), in float64."""
    full = np.broadcast_to(np.asarray(param, np.float64).reshape(() if param.size == 1 else param.shape), sample)
    return np.ascontiguousarray(full.reshape(-1)[red_off])


@register_kernel("layer_norm")
def lower_layer_norm(ctx: LowerContext) -> LoweredOp:
    """Every normalizing layer: one pass for the statistics, one for the output, per lane."""
    op = ctx.node.op
    tables = TableCache(op.axes)
    gamma, beta = ctx.weights[ctx.node.inputs[1]], ctx.weights[ctx.node.inputs[2]]
    params: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    code, eps_max = STATISTICS[op.statistic], op.eps_mode == "max"

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        lane_base, red_off = tables(x.shape)
        sample = x.shape[1:]
        if sample not in params:
            params[sample] = (per_element(gamma, sample, red_off), per_element(beta, sample, red_off))
        g, b = params[sample]
        layer_norm_kernel(x.reshape(-1), out.reshape(-1), lane_base, red_off, g, b, float(op.epsilon), op.center,
                          code, eps_max)
        return out

    return LoweredOp(run=run, inplace=True, description=f"layer_norm axes={list(op.axes)} {op.statistic}",
                     work_per_element=4)


@register_kernel("reduce")
def lower_reduce(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    tables = TableCache(op.axes)
    mode = REDUCE_MODES[op.mode]

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        lane_base, red_off = tables(x.shape)
        reduce_kernel(np.ascontiguousarray(x).reshape(-1), out.reshape(-1), lane_base, red_off, mode)
        return out

    return LoweredOp(run=run, description=f"reduce {op.mode} axes={list(op.axes)}", work_per_element=2)
