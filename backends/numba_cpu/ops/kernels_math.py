"""Per-op kernels of the general math ops: ``unary``, ``binary`` (NumPy broadcasting), ``matmul``, ``slice``.

``unary`` and ``binary`` are numba loops over an integer function code (one
compiled kernel per dtype serves every function); a broadcast ``binary``
walks the output in C order and finds each operand's element through its
strides (0 along broadcast axes). ``matmul`` hands the product to NumPy's
BLAS-backed ``matmul`` (what a GEMM library does better than a generated
loop at these sizes); ``slice`` is a strided copy.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.broadcast import bias_lane_table, broadcast_strides  # noqa: F401  (re-exported)
from keydnn.backends.numba_cpu.kernels.helpers_tensor import binary_scalar, unary_scalar
from keydnn.backends.numba_cpu.ops.lowering import (
    PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel,
)
from keydnn.ir.functions import BINARY_CODES as TABLE_BINARY_CODES
from keydnn.ir.functions import FUNCTION_CODES
from keydnn.ir.ops.math import UNARY_FUNCTIONS

__all__ = ["UNARY_CODES", "BINARY_CODES", "unary_scalar", "binary_scalar", "broadcast_strides"]

#: unary function name -> its code in the one table of scalar functions (``keydnn.ir.functions``).
UNARY_CODES = {name: FUNCTION_CODES[name] for name in UNARY_FUNCTIONS}
BINARY_CODES = dict(TABLE_BINARY_CODES)


_CHUNK = 1 << 14


@numba.njit(**PARALLEL_JIT_OPTIONS)
def unary_kernel(x, out, code, a, b):
    n = x.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            out[i] = unary_scalar(np.float64(x[i]), code, a, b)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def binary_kernel(x, y, out, shape, xs, ys, code, same):
    """out (flat, C order over ``shape``) = f(x, y); ``xs``/``ys``: element strides, 0 on broadcast axes."""
    n = out.size
    rank = shape.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, (c + 1) * _CHUNK)):
            if same:
                ox = i
                oy = i
            else:
                rem = i
                ox = 0
                oy = 0
                for d in range(rank - 1, -1, -1):
                    k = rem % shape[d]
                    rem //= shape[d]
                    ox += k * xs[d]
                    oy += k * ys[d]
            out[i] = binary_scalar(np.float64(x[ox]), np.float64(y[oy]), code)


@register_kernel("unary")
def lower_unary(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    code, a, b = UNARY_CODES[op.function], float(op.a), float(op.b)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        unary_kernel(inputs[0].reshape(-1), out.reshape(-1), code, a, b)
        return out

    return LoweredOp(run=run, inplace=True, description=op.function, work_per_element=8)


def _operand(ctx: LowerContext, inputs: Sequence[np.ndarray], position: int, consts: dict) -> np.ndarray:
    name = ctx.node.inputs[position]
    if name in ctx.weights:
        if position not in consts:
            consts[position] = np.ascontiguousarray(ctx.weights[name], dtype=ctx.dtype)
        return consts[position]
    return inputs[position]


@register_kernel("binary")
def lower_binary(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    code = BINARY_CODES[op.function]
    consts: dict[int, np.ndarray] = {}

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x, y = _operand(ctx, inputs, 0, consts), _operand(ctx, inputs, 1, consts)
        same = x.shape == y.shape == out.shape
        shape = np.array(out.shape, dtype=np.int64)
        xs, ys = broadcast_strides(x.shape, out.shape), broadcast_strides(y.shape, out.shape)
        binary_kernel(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(y).reshape(-1), out.reshape(-1),
                      shape, xs, ys, code, same)
        return out

    return LoweredOp(run=run, description=op.function, work_per_element=2)


@register_kernel("matmul")
def lower_matmul(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    consts: dict[int, np.ndarray] = {}

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x, y = _operand(ctx, inputs, 0, consts), _operand(ctx, inputs, 1, consts)
        np.matmul(x, np.swapaxes(y, -1, -2) if op.transpose_b else y, out=out)
        if op.scale != 1.0:
            out *= out.dtype.type(op.scale)
        return out

    k = ctx.in_types[0].shape[-1]
    return LoweredOp(run=run, description=f"matmul{' b^T' if op.transpose_b else ''}",
                     work_per_element=k if isinstance(k, int) else 64)


@register_kernel("slice")
def lower_slice(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    index = (slice(None),) + tuple(slice(a, b, c) for a, b, c in zip(op.starts, op.stops, op.steps))

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        out[...] = inputs[0][index]
        return out

    return LoweredOp(run=run, description="slice")


@numba.njit(**PARALLEL_JIT_OPTIONS)
def bias_softmax_kernel(x, out, length, b1, base1, step1, b2, base2, step2, nb):
    """softmax over rows of ``length`` of x + b1 (+ b2): the biased row is built once, in ``out``."""
    lanes = x.size // length
    for t in prange(lanes):
        o = t * length
        m = -np.inf
        for k in range(length):
            v = np.float64(x[o + k]) + b1[base1[t] + k * step1]
            if nb == 2:
                v += b2[base2[t] + k * step2]
            out[o + k] = v
            if v > m:
                m = v
        s = 0.0
        for k in range(length):
            e = math.exp(np.float64(out[o + k]) - m)
            out[o + k] = e
            s += e
        inv = 1.0 / s
        for k in range(length):
            out[o + k] = out[o + k] * inv


@register_kernel("bias_softmax")
def lower_bias_softmax(ctx: LowerContext) -> LoweredOp:
    """Attention's scores + mask biases + softmax in one kernel (fuse-masked-softmax)."""
    consts: dict[int, np.ndarray] = {}
    tables: dict[tuple, tuple] = {}
    nb = len(ctx.node.inputs) - 1

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        biases = [np.ascontiguousarray(_operand(ctx, inputs, p, consts), dtype=np.float64) for p in range(1, nb + 1)]
        key = (x.shape,) + tuple(b.shape for b in biases)
        if key not in tables:
            tables[key] = tuple(bias_lane_table(x.shape, b.shape) for b in biases)
        t = tables[key]
        b2, (base2, step2) = (biases[1], t[1]) if nb == 2 else (biases[0], t[0])
        bias_softmax_kernel(x.reshape(-1), out.reshape(-1), x.shape[-1], biases[0].reshape(-1), t[0][0], t[0][1],
                            b2.reshape(-1), base2, step2, nb)
        return out

    return LoweredOp(run=run, inplace=True, description=f"bias_softmax ({nb} bias)", work_per_element=8)
