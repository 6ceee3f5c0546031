"""Elementwise kernels: relu / named activations, softmax on any axis, and the per-channel affine family.

All are one thread per element (or per softmax lane) with grid-stride loops
over flat arrays. Parameters that broadcast (scale_shift, batch_norm, prelu)
are laid out at compile time as one vector read with
``param[(i // inner) % period]``: per channel ``inner`` is the size of the
axes after the channel axis and ``period`` the channel count; per sample
(broadcast form) the parameter is expanded to the sample shape, ``inner = 1``;
a scalar has ``period = 1``. So one kernel serves every form.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Sequence

import numpy as np

from keydnn.backends.numba_cuda.activations import epilogue_for, make_activation
from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, Unsupported, grid_1d, register_kernel,
)
from keydnn.ir.ops.base import normalize_axis

__all__ = ["lower_activation", "lower_softmax", "lower_scale_shift", "lower_batch_norm", "lower_prelu"]

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def _activate_kernel(dtype_name: str, code: int) -> Callable:
    act = make_activation(dtype_name, code)

    @cuda.jit
    def activate(x, out, size, p0, p1, p2, p3):  # pragma: no cover - device code
        for i in range(cuda.grid(1), size, cuda.gridsize(1)):
            out[i] = act(x[i], p0, p1, p2, p3)

    return activate


@functools.lru_cache(maxsize=None)
def _softmax_kernel(dtype_name: str) -> Callable:
    zero = np.dtype(dtype_name).type(0)

    @cuda.jit
    def softmax(x, out, lanes, length, inner):  # pragma: no cover - device code
        """One thread per lane of the (outer, length, inner) view; max-subtracted; ``out`` may be ``x``."""
        for t in range(cuda.grid(1), lanes, cuda.gridsize(1)):
            o = t // inner
            base = o * length * inner + (t - o * inner)
            m = x[base]
            for k in range(1, length):
                v = x[base + k * inner]
                if v > m:
                    m = v
            s = zero
            for k in range(length):
                e = math.exp(x[base + k * inner] - m)
                out[base + k * inner] = e
                s += e
            for k in range(length):
                out[base + k * inner] = out[base + k * inner] / s

    return softmax


@functools.lru_cache(maxsize=None)
def _affine_kernel(dtype_name: str) -> Callable:
    @cuda.jit
    def affine(x, out, size, scale, shift, inner, period):  # pragma: no cover - device code
        for i in range(cuda.grid(1), size, cuda.gridsize(1)):
            c = (i // inner) % period
            out[i] = x[i] * scale[c] + shift[c]

    return affine


@functools.lru_cache(maxsize=None)
def _prelu_kernel(dtype_name: str) -> Callable:
    zero = np.dtype(dtype_name).type(0)

    @cuda.jit
    def prelu(x, out, size, alpha, inner, period):  # pragma: no cover - device code
        for i in range(cuda.grid(1), size, cuda.gridsize(1)):
            v = x[i]
            out[i] = v if v > zero else alpha[(i // inner) % period] * v

    return prelu


@register_kernel("relu", "activation")
def lower_activation(ctx: LowerContext) -> LoweredOp:
    """Standalone relu or named activation: one elementwise pass, may run in place."""
    epilogue = epilogue_for(ctx.node.op, ctx.dtype)
    kernel_of = _activate_kernel(ctx.dtype.name, epilogue.code)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        size = math.prod(out_shape)
        kernel = configure(kernel_of, grid_1d(size), THREADS)

        def launch(inputs: Sequence, out, scratch):
            kernel(inputs[0], out, size, *epilogue.params)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, inplace=True, description=f"{ctx.node.op.kind} code={epilogue.code}")


@register_kernel("softmax")
def lower_softmax(ctx: LowerContext) -> LoweredOp:
    """Softmax on any axis: the tensor is viewed as (outer, axis, inner), one lane per (outer, inner)."""
    axis = normalize_axis(ctx.node.op.axis, ctx.in_types[0].rank)
    kernel_of = _softmax_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        length, inner = out_shape[axis], math.prod(out_shape[axis + 1:])
        lanes = math.prod(out_shape) // max(length, 1)
        kernel = configure(kernel_of, grid_1d(lanes), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if lanes:
                kernel(inputs[0], out, lanes, length, inner)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, inplace=True, description=f"softmax axis={axis}")


def _channel_vectors(ctx: LowerContext, params: list[np.ndarray], axis: int) -> tuple[list[np.ndarray], int]:
    """Per-channel parameters (each scalar or (C,)) as equal-length vectors; the channel axis."""
    if all(p.size == 1 for p in params):
        return [p.reshape(1) for p in params], -1
    channels = max(p.size for p in params)
    return [np.broadcast_to(p.reshape(-1), (channels,)) for p in params], axis


def _sample_vectors(ctx: LowerContext, params: list[np.ndarray]) -> list[np.ndarray]:
    """Broadcast-form parameters expanded to the (static) sample shape, or kept as scalars."""
    if all(p.size == 1 for p in params):
        return [p.reshape(1) for p in params]
    sample = ctx.in_types[0].shape[1:]
    if not all(isinstance(d, int) for d in sample):
        raise Unsupported(f"broadcast parameters need a static sample shape, got {ctx.in_types[0]}")
    return [np.broadcast_to(p if p.size > 1 else p.reshape(()), sample).reshape(-1) for p in params]


def _lower_channelwise(ctx: LowerContext, kernel_of: Callable, vectors: list[np.ndarray], axis: int,
                       what: str) -> LoweredOp:
    """Bind a (x, out, size, *params, inner, period) kernel; ``axis`` -1 means scalar or per-sample."""
    devs = [ctx.upload(v) for v in vectors]
    period = vectors[0].size

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        size = math.prod(out_shape)
        inner = math.prod(out_shape[axis + 1:]) if axis >= 0 else 1
        kernel = configure(kernel_of, grid_1d(size), THREADS)

        def launch(inputs: Sequence, out, scratch):
            kernel(inputs[0], out, size, *devs, inner, period)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, inplace=True, description=f"{what} period={period}")


@register_kernel("scale_shift")
def lower_scale_shift(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    params = [ctx.constant(1), ctx.constant(2)]
    if op.axis is None:
        vectors, axis = _sample_vectors(ctx, params), -1
    else:
        vectors, axis = _channel_vectors(ctx, params, normalize_axis(op.axis, ctx.in_types[0].rank))
    return _lower_channelwise(ctx, _affine_kernel(ctx.dtype.name), vectors, axis, "scale_shift")


@register_kernel("batch_norm")
def lower_batch_norm(ctx: LowerContext) -> LoweredOp:
    """Inference batch norm is ``x * s + t`` per channel; s and t are computed once, in float64."""
    op = ctx.node.op
    mean, var, gamma, beta = (np.asarray(ctx.weights[n], dtype=np.float64) for n in ctx.node.inputs[1:5])
    s = gamma / np.sqrt(var + op.epsilon)
    params = [s.astype(ctx.dtype), (beta - mean * s).astype(ctx.dtype)]
    vectors, axis = _channel_vectors(ctx, params, normalize_axis(op.axis, ctx.in_types[0].rank))
    return _lower_channelwise(ctx, _affine_kernel(ctx.dtype.name), vectors, axis, "batch_norm")


@register_kernel("prelu")
def lower_prelu(ctx: LowerContext) -> LoweredOp:
    vectors = _sample_vectors(ctx, [ctx.constant(1)])
    return _lower_channelwise(ctx, _prelu_kernel(ctx.dtype.name), vectors, -1, "prelu")
