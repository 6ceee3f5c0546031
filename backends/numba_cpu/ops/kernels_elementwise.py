"""Elementwise kernels (relu, named activations), softmax, and the fused-epilogue encoding.

An activation is encoded once at compile time as an integer code plus four
float parameters, so that one compiled kernel (per dtype) serves every
function and conv/dense can apply it as a fused epilogue without a Python
round trip. Scalars are computed in float64 and rounded on store, which keeps
float32 results within an ulp or two of the float64 reference.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.codegen.codes import (  # noqa: F401  (re-exported: kernels import them from here)
    ACTIVATION_CODES, LINEAR, NO_EPILOGUE, RELU, RELU0, Epilogue, encode_activation,
)
from keydnn.backends.numba_cpu.kernels.helpers import softmax_flat
from keydnn.backends.numba_cpu.kernels.functions import apply_function
from keydnn.backends.numba_cpu.ops.lowering import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel
from keydnn.ir.ops.base import normalize_axis

__all__ = [
    "ACTIVATION_CODES", "Epilogue", "NO_EPILOGUE", "encode_activation", "activate_range",
    "activate_parallel", "softmax_kernel",
]

logger = logging.getLogger(__name__)

@numba.njit(**JIT_OPTIONS)
def activate_range(x, out, lo, hi, code, p0, p1, p2, p3):
    """out[lo:hi] = act(x[lo:hi]) on flat arrays; ``out`` may be ``x``. Plain relu gets its own loop."""
    if code == RELU0:
        for i in range(lo, hi):
            v = x[i]
            out[i] = v if v > 0.0 else 0.0
    else:
        for i in range(lo, hi):
            out[i] = apply_function(np.float64(x[i]), code, p0, p1, p2, p3)


_CHUNK = 1 << 14


@numba.njit(**PARALLEL_JIT_OPTIONS)
def activate_parallel(x, out, code, p0, p1, p2, p3):
    """Elementwise activation of a flat array, split into chunks across threads."""
    n = x.size
    chunks = (n + _CHUNK - 1) // _CHUNK
    for c in prange(chunks):
        activate_range(x, out, c * _CHUNK, min(n, (c + 1) * _CHUNK), code, p0, p1, p2, p3)


_LANES = 256


@numba.njit(**PARALLEL_JIT_OPTIONS)
def softmax_kernel(x, out, outer, length, inner):
    """Softmax over the middle axis of a flat (outer, length, inner) tensor, blocks of rows per task, through
    the generated code's helper."""
    rows = max(1, _LANES // max(inner, 1))
    for blk in prange((outer + rows - 1) // rows):
        lo = blk * rows
        base = lo * length * inner
        softmax_flat(x, base, out, base, min(outer, lo + rows) - lo, length, inner)


def _elementwise(ctx: LowerContext, act: Epilogue) -> LoweredOp:
    code, p0, p1, p2, p3 = act

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        activate_parallel(inputs[0].reshape(-1), out.reshape(-1), code, p0, p1, p2, p3)
        return out

    cost = 1 if code in (LINEAR, RELU0, RELU) else 8  # transcendental functions
    name = getattr(ctx.node.op, "function", ctx.node.op.kind)
    return LoweredOp(run=run, inplace=True, description=name, work_per_element=cost)


@register_kernel("relu", "activation")
def lower_activation(ctx: LowerContext) -> LoweredOp:
    """Standalone relu or named activation: one elementwise pass, may run in place."""
    return _elementwise(ctx, encode_activation(ctx.node.op))


@register_kernel("softmax")
def lower_softmax(ctx: LowerContext) -> LoweredOp:
    """Softmax on any axis: view the tensor as (outer, axis, inner) so one kernel serves all."""
    shape = ctx.in_types[0].shape
    axis = normalize_axis(ctx.node.op.axis, len(shape))

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        view = (math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:]))
        softmax_kernel(np.ascontiguousarray(x).reshape(-1), out.reshape(-1), *view)
        return out

    return LoweredOp(run=run, inplace=True, description=f"softmax axis={axis}", work_per_element=8)
