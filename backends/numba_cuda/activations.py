"""Activation functions as one device function per dtype, and their compile-time encoding.

An activation (a standalone relu/activation node, or the epilogue fused into
conv2d/dense) is encoded once as an integer code plus four parameters. The
code is a compile-time constant of the device function, so a kernel carries
only the one formula it applies (an epilogue with every branch inlined would
cost a GEMM kernel registers and occupancy); the parameters are run-time
arguments, so layers that differ only in them share one compiled kernel. The
codes are the CPU backend's. Parameters and literals are in the compute
dtype, so a float32 kernel never promotes to float64 (slow on most GPUs);
each formula mirrors ``keydnn.ir.reference`` term by term. Device code spells
min/max as comparisons: numba 0.68's built-in CUDA target cannot type the
``min``/``max`` builtins.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, NamedTuple, Optional

import numpy as np

from keydnn.backends.epilogues import (  # noqa: F401  (re-exported: the kernels' names)
    ACTIVATION_CODES, ELU, EXPONENTIAL, GELU, GELU_TANH, HARD_SIGMOID, HARD_SIGMOID_K2, LINEAR, NO_EPILOGUE,
    RELU, RELU0, SELU, SIGMOID, SOFTPLUS, SOFTSIGN, SWISH, TANH, Encoded,
)
from keydnn.backends.epilogues import encode_activation as _encode_activation
from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.lowering import Unsupported
from keydnn.ir.ops.base import OpBase

__all__ = ["ACTIVATION_CODES", "Encoded", "Epilogue", "LINEAR", "encode_activation", "epilogue_for",
           "make_activation"]

logger = logging.getLogger(__name__)


def encode_activation(op: Optional[OpBase]) -> Encoded:
    """Encode a relu/activation op (standalone or a fused epilogue); None is the identity."""
    return _encode_activation(op, Unsupported, "numba-cuda")


class Epilogue(NamedTuple):
    """What a kernel factory and its launches need: the code (compiled in), the parameters (passed)."""

    code: int
    params: tuple


def epilogue_for(op: Optional[OpBase], dtype: np.dtype) -> Epilogue:
    """Encode ``op`` (None: identity) with its parameters as ``dtype`` scalars, the kernels' argument types."""
    code, *params = encode_activation(op)
    return Epilogue(code, tuple(dtype.type(p) for p in params))


@functools.lru_cache(maxsize=None)
def make_activation(dtype_name: str, code: int) -> Callable:
    """``act(v, p0, p1, p2, p3)`` for one activation ``code``, with ``dtype_name`` literals."""
    f = np.dtype(dtype_name).type
    zero, one, half, six, fifth = f(0.0), f(1.0), f(0.5), f(6.0), f(0.2)
    selu_alpha, selu_scale = f(1.6732632423543772), f(1.0507009873554805)
    sqrt_half, sqrt_2_over_pi, gelu_c = f(1.0 / math.sqrt(2.0)), f(math.sqrt(2.0 / math.pi)), f(0.044715)

    @cuda.jit(device=True)
    def act(v, p0, p1, p2, p3):  # pragma: no cover - runs on the device (or the simulator)
        if code == LINEAR:
            return v
        if code == RELU0:
            return v if v > zero else zero
        if code == RELU:
            y = v if v > p0 else zero
            if p2 != zero:
                y = zero if y < zero else (p1 if y > p1 else y)
            if p3 != zero:
                below = p0 - v
                y -= p3 * (below if below > zero else zero)
            return y
        if code == SIGMOID:
            return one / (one + math.exp(-v))
        if code == TANH:
            return math.tanh(v)
        if code == SOFTPLUS:
            return (v if v > zero else zero) + math.log1p(math.exp(-abs(v)))
        if code == SOFTSIGN:
            return v / (one + abs(v))
        if code == ELU:
            return v if v > zero else p0 * math.expm1(v)
        if code == SELU:
            return selu_scale * (v if v > zero else selu_alpha * math.expm1(v))
        if code == GELU:
            return half * v * (one + math.erf(v * sqrt_half))
        if code == GELU_TANH:
            return half * v * (one + math.tanh(sqrt_2_over_pi * (v + gelu_c * v * v * v)))
        if code == SWISH:
            return v / (one + math.exp(-v))
        if code == EXPONENTIAL:
            return math.exp(v)
        if code == HARD_SIGMOID:
            t = v / six + half
            return zero if t < zero else (one if t > one else t)
        if code == HARD_SIGMOID_K2:
            t = fifth * v + half
            return zero if t < zero else (one if t > one else t)
        return v

    return act
