"""CUDA kernels of the reducing ops: ``layer_norm`` and ``reduce``, one thread per lane.

As the CPU's generated code (``numba_cpu.codegen.emit_tensor``) does: the two index tables of
``reduction_tables`` (lane offsets, reduced-element offsets) are built and
uploaded once per input shape, so one kernel per dtype serves every axis set.
Statistics accumulate in float64.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np

from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, grid_1d, register_kernel,
)
from keydnn.ir.ops.reduce import norm_axes, reduction_tables

__all__ = ["lower_layer_norm", "lower_reduce"]

_STATISTICS = {"variance": 0, "mean_square": 1, "sum_square": 2}
_MODES = {"mean": 0, "sum": 1, "max": 2, "min": 3}


@functools.lru_cache(maxsize=None)
def _layer_norm_kernel(dtype_name: str) -> Callable:
    @cuda.jit
    def layer_norm(x, out, lane_base, red_off, gamma, beta, lanes, length, eps, center, stat, eps_max):
        for t in range(cuda.grid(1), lanes, cuda.gridsize(1)):  # pragma: no cover - device code
            b = lane_base[t]
            mean = 0.0
            for k in range(length):
                mean += x[b + red_off[k]]
            mean /= length
            s = 0.0
            if stat == 0:
                for k in range(length):
                    d = x[b + red_off[k]] - mean
                    s += d * d
                s /= length
            else:
                for k in range(length):
                    v = x[b + red_off[k]]
                    s += v * v
                if stat == 1:
                    s /= length
            if eps_max:
                s = max(s, eps)
            else:
                s = s + eps
            inv = 1.0 / math.sqrt(s)
            c = mean if center else 0.0
            for k in range(length):
                i = b + red_off[k]
                out[i] = (x[i] - c) * inv * gamma[k] + beta[k]

    return layer_norm


@functools.lru_cache(maxsize=None)
def _reduce_kernel(dtype_name: str) -> Callable:
    @cuda.jit
    def reduce(x, out, lane_base, red_off, lanes, length, mode):
        for t in range(cuda.grid(1), lanes, cuda.gridsize(1)):  # pragma: no cover - device code
            b = lane_base[t]
            if mode <= 1:
                s = 0.0
                for k in range(length):
                    s += x[b + red_off[k]]
                out[t] = s / length if mode == 0 else s
            else:
                m = x[b]
                for k in range(1, length):
                    v = x[b + red_off[k]]
                    if (mode == 2 and v > m) or (mode == 3 and v < m) or v != v:
                        m = v
                out[t] = m

    return reduce


def _tables(shape: Shape, axes: tuple[int, ...]):
    lane_base, red_off = reduction_tables(shape, norm_axes(axes, len(shape)))
    return lane_base, red_off, cuda.to_device(lane_base), cuda.to_device(red_off)


def _per_element(param: np.ndarray, sample: Shape, red_off: np.ndarray, dtype: np.dtype):
    full = np.broadcast_to(np.asarray(param, np.float64).reshape(() if param.size == 1 else param.shape), sample)
    return cuda.to_device(np.ascontiguousarray(full.reshape(-1)[red_off], dtype=dtype))


@register_kernel("layer_norm")
def lower_layer_norm(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    kernel_of = _layer_norm_kernel(ctx.dtype.name)
    gamma, beta = ctx.weights[ctx.node.inputs[1]], ctx.weights[ctx.node.inputs[2]]
    dtype = ctx.dtype
    eps, center = ctx.scalar(op.epsilon), op.center
    stat, eps_max = _STATISTICS[op.statistic], op.eps_mode == "max"

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        lane_base, red_off, d_base, d_off = _tables(tuple(in_shapes[0]), op.axes)
        g = _per_element(gamma, tuple(in_shapes[0][1:]), red_off, dtype)
        b = _per_element(beta, tuple(in_shapes[0][1:]), red_off, dtype)
        lanes, length = lane_base.size, red_off.size
        kernel = configure(kernel_of, grid_1d(lanes), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if lanes:
                kernel(inputs[0], out, d_base, d_off, g, b, lanes, length, eps, center, stat, eps_max)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, inplace=True, description=f"layer_norm axes={list(op.axes)} {op.statistic}")


@register_kernel("reduce")
def lower_reduce(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    kernel_of = _reduce_kernel(ctx.dtype.name)
    mode = _MODES[op.mode]

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        lane_base, red_off, d_base, d_off = _tables(tuple(in_shapes[0]), op.axes)
        lanes, length = lane_base.size, red_off.size
        kernel = configure(kernel_of, grid_1d(lanes), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if lanes:
                kernel(inputs[0], out, d_base, d_off, lanes, length, mode)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=f"reduce {op.mode} axes={list(op.axes)}")
