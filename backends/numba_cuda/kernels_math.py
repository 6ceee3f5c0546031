"""CUDA kernels of the general math ops: ``unary``, ``binary`` (NumPy broadcasting), ``matmul``, ``slice``.

One thread per output element with grid-stride loops; shapes and strides
travel as small device arrays built once per input shape, so each kernel
compiles once per dtype whatever the rank. ``unary``/``binary`` mirror the
CPU backend's function codes and formulas (computed in float64 and rounded on
store); ``matmul`` is a plain dot product per output element (attention-sized
products; large GEMMs go through ``dense``).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np

from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.functions import make_binary, make_function
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, grid_1d, register_kernel,
)
from keydnn.ir.functions import BINARY_CODES, FUNCTION_CODES
from keydnn.ir.ops.math import UNARY_FUNCTIONS

__all__ = ["lower_unary", "lower_binary", "lower_matmul", "lower_slice"]

_UNARY_CODES = {name: FUNCTION_CODES[name] for name in UNARY_FUNCTIONS}
_BINARY_CODES = BINARY_CODES


@functools.lru_cache(maxsize=None)
def _unary_kernel(dtype_name: str, code: int) -> Callable:
    fn = make_function("float64", code)  # computed in float64, as the CPU backend and the reference do

    @cuda.jit
    def unary(x, out, size, a, b):  # pragma: no cover - device code
        for i in range(cuda.grid(1), size, cuda.gridsize(1)):
            out[i] = fn(np.float64(x[i]), a, b, 0.0, 0.0)

    return unary


@functools.lru_cache(maxsize=None)
def _binary_kernel(dtype_name: str, code: int) -> Callable:
    fn = make_binary("float64", code)  # computed in float64, as the CPU backend and the reference do

    @cuda.jit
    def binary(x, y, out, size, shape, xs, ys):  # pragma: no cover - device code
        rank = shape.shape[0]
        for i in range(cuda.grid(1), size, cuda.gridsize(1)):
            rem = i
            ox = 0
            oy = 0
            for d in range(rank - 1, -1, -1):
                k = rem % shape[d]
                rem //= shape[d]
                ox += k * xs[d]
                oy += k * ys[d]
            out[i] = fn(np.float64(x[ox]), np.float64(y[oy]))

    return binary


@functools.lru_cache(maxsize=None)
def _matmul_kernel(dtype_name: str) -> Callable:
    @cuda.jit
    def matmul(x, y, out, total, m, n, kk, xb, yb, sk, sn, scale):  # pragma: no cover - device code
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            j = t % n
            i = (t // n) % m
            b = t // (m * n)
            xo = xb[b] + i * kk
            yo = yb[b] + j * sn
            s = 0.0
            for k in range(kk):
                s += np.float64(x[xo + k]) * np.float64(y[yo + k * sk])
            out[t] = s * scale

    return matmul


@functools.lru_cache(maxsize=None)
def _slice_kernel(dtype_name: str) -> Callable:
    @cuda.jit
    def gather(x, out, total, shape, strides, base):  # pragma: no cover - device code
        rank = shape.shape[0]
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            rem = t
            src = base
            for d in range(rank - 1, -1, -1):
                src += (rem % shape[d]) * strides[d]
                rem //= shape[d]
            out[t] = x[src]

    return gather


def _strides(shape: Shape, out: Shape) -> np.ndarray:
    full = (1,) * (len(out) - len(shape)) + tuple(shape)
    strides = [math.prod(full[i + 1:]) for i in range(len(full))]
    return np.array([0 if d == 1 and o != 1 else s for d, o, s in zip(full, out, strides)], dtype=np.int64)


@register_kernel("unary")
def lower_unary(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    code, a, b = _UNARY_CODES[op.function], float(op.a), float(op.b)
    kernel_of = _unary_kernel(ctx.dtype.name, code)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        size = math.prod(out_shape)
        kernel = configure(kernel_of, grid_1d(size), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if size:
                kernel(inputs[0], out, size, a, b)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, inplace=True, description=op.function)


@register_kernel("binary")
def lower_binary(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    kernel_of = _binary_kernel(ctx.dtype.name, _BINARY_CODES[op.function])

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        size = math.prod(out_shape)
        shape = cuda.to_device(np.array(out_shape, dtype=np.int64))
        xs = cuda.to_device(_strides(in_shapes[0], out_shape))
        ys = cuda.to_device(_strides(in_shapes[1], out_shape))
        kernel = configure(kernel_of, grid_1d(size), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if size:
                kernel(inputs[0], inputs[1], out, size, shape, xs, ys)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=op.function)


@register_kernel("matmul")
def lower_matmul(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    kernel_of = _matmul_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        xs, ys = tuple(in_shapes[0]), tuple(in_shapes[1])
        m, kk = xs[-2], xs[-1]
        n = ys[-2] if op.transpose_b else ys[-1]
        lead = tuple(out_shape[:-2])
        batches = math.prod(lead)
        idx = np.indices(lead).reshape(len(lead), -1).T if lead else np.zeros((1, 0), dtype=np.int64)

        def bases(shape: tuple) -> np.ndarray:
            own = (1,) * (len(lead) - (len(shape) - 2)) + shape[:-2]
            strides = [math.prod(own[i + 1:]) * shape[-2] * shape[-1] for i in range(len(own))]
            return np.array([sum(0 if own[d] == 1 else int(ix[d]) * strides[d] for d in range(len(lead)))
                             for ix in idx], dtype=np.int64).reshape(max(batches, 1))

        sk, sn = (1, kk) if op.transpose_b else (n, 1)
        xb, yb = cuda.to_device(bases(xs)), cuda.to_device(bases(ys))
        total = math.prod(out_shape)
        kernel = configure(kernel_of, grid_1d(total), THREADS)
        scale = float(op.scale)

        def launch(inputs: Sequence, out, scratch):
            if total:
                kernel(inputs[0], inputs[1], out, total, m, n, kk, xb, yb, sk, sn, scale)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description="matmul")


@register_kernel("slice")
def lower_slice(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    kernel_of = _slice_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        shape = tuple(in_shapes[0])
        strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        steps = (1,) + tuple(op.steps)
        starts = (0,) + tuple(op.starts)
        base = sum(s * st for s, st in zip(starts, strides))
        d_shape = cuda.to_device(np.array(out_shape, dtype=np.int64))
        d_strides = cuda.to_device(np.array([st * sp for st, sp in zip(strides, steps)], dtype=np.int64))
        total = math.prod(out_shape)
        kernel = configure(kernel_of, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if total:
                kernel(inputs[0], out, total, d_shape, d_strides, base)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description="slice")


@functools.lru_cache(maxsize=None)
def _bias_softmax_kernel(dtype_name: str) -> Callable:
    @cuda.jit
    def bias_softmax(x, out, lanes, length, b1, base1, step1, b2, base2, step2, nb):  # pragma: no cover
        for t in range(cuda.grid(1), lanes, cuda.gridsize(1)):
            o = t * length
            m = -math.inf
            for k in range(length):
                v = np.float64(x[o + k]) + b1[base1[t] + k * step1]
                if nb == 2:
                    v += b2[base2[t] + k * step2]
                if v > m:
                    m = v
            s = 0.0
            for k in range(length):
                v = np.float64(x[o + k]) + b1[base1[t] + k * step1]
                if nb == 2:
                    v += b2[base2[t] + k * step2]
                e = math.exp(v - m)
                out[o + k] = e
                s += e
            for k in range(length):
                out[o + k] = out[o + k] / s

    return bias_softmax


@register_kernel("bias_softmax")
def lower_bias_softmax(ctx: LowerContext) -> LoweredOp:
    from keydnn.backends.broadcast import bias_lane_table

    kernel_of = _bias_softmax_kernel(ctx.dtype.name)
    nb = len(ctx.node.inputs) - 1

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        length = out_shape[-1]
        lanes = math.prod(out_shape) // max(length, 1)
        tabs = [bias_lane_table(tuple(out_shape), tuple(s)) for s in in_shapes[1:]]
        dev = [(cuda.to_device(base), step) for base, step in tabs]
        if nb == 1:
            dev.append(dev[0])
        kernel = configure(kernel_of, grid_1d(lanes), THREADS)

        def launch(inputs: Sequence, out, scratch):
            b2 = inputs[2] if nb == 2 else inputs[1]
            if lanes:
                kernel(inputs[0], out, lanes, length, inputs[1], dev[0][0], dev[0][1], b2, dev[1][0], dev[1][1], nb)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=f"bias_softmax ({nb} bias)")
