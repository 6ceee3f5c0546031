"""Per-channel and per-sample affine kernels: batch_norm, scale_shift (both forms), prelu.

Every parameter is laid out once, at lowering time, as a flat float64 vector
for the ``(outer, period, inner)`` view of the tensor
(``keydnn.backends.broadcast.param_view``), so one kernel per op
serves the per-channel form (``period`` channels, ``inner`` pixels), the
per-sample broadcast form and scalars; the loops are the generated code's
helpers (``cg_kernels.affine_flat``/``prelu_flat``). Arithmetic is in float64 and rounded
on store, like the reference. batch_norm is ``x * s + t`` with ``s`` and
``t`` computed once in float64.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.broadcast import ParamView, param_view
from keydnn.backends.numba_cpu.kernels.helpers import affine_flat, prelu_flat
from keydnn.backends.numba_cpu.codegen.codes import batch_norm_params
from keydnn.backends.numba_cpu.ops.lowering import (
    PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, Unsupported, register_kernel,
)
from keydnn.ir.ops.base import normalize_axis

__all__ = ["affine_kernel", "prelu_kernel", "batch_norm_params"]

logger = logging.getLogger(__name__)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def affine_kernel(x, out, outer, period, inner, params):
    """Flat ``x`` viewed as (outer, period, inner): ``x * s[c] + t[c]`` with ``params = [s..., t...]``, one outer
    row per task, through the generated code's helper."""
    step = period * inner
    for o in prange(outer):
        affine_flat(x, o * step, out, o * step, 1, period, inner, params, 0, period)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def prelu_kernel(x, out, outer, period, inner, params):
    """``x`` where x > 0, ``alpha[c] * x`` where x < 0 (zeros and NaN pass through); ``params = alpha``."""
    step = period * inner
    for o in prange(outer):
        prelu_flat(x, o * step, out, o * step, 1, period, inner, params, 0)


def _sample(ctx: LowerContext) -> tuple[int, ...]:
    sample = ctx.in_types[0].shape[1:]
    if not all(isinstance(d, int) for d in sample):
        raise Unsupported(f"broadcast parameters need a static sample shape, got {ctx.in_types[0]}")
    return tuple(sample)  # type: ignore[return-value]


def _lower_view(view: ParamView, kernel, description: str, work: int = 1) -> LoweredOp:
    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = np.ascontiguousarray(inputs[0])
        kernel(x.reshape(-1), out.reshape(-1), *view.dims(x.shape), packed)
        return out

    packed = np.ascontiguousarray(np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1) for p in view.params]))

    return LoweredOp(run=run, inplace=True, description=f"{description} period={view.period}",
                     work_per_element=work)


def _axis(ctx: LowerContext, axis: Optional[int]) -> Optional[int]:
    return None if axis is None else normalize_axis(axis, ctx.in_types[0].rank)


@register_kernel("scale_shift")
def lower_scale_shift(ctx: LowerContext) -> LoweredOp:
    """Both forms (``axis`` set: per channel; ``axis=None``: per sample) become one parameter view."""
    op = ctx.node.op
    params = [ctx.weights[ctx.node.inputs[1]], ctx.weights[ctx.node.inputs[2]]]
    axis = _axis(ctx, op.axis)
    view = param_view(params, _sample(ctx) if axis is None else ctx.in_types[0].shape[1:], axis)
    return _lower_view(view, affine_kernel, "scale_shift")


@register_kernel("batch_norm")
def lower_batch_norm(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    s, t = batch_norm_params(ctx.weights, ctx.node.inputs[1:5], op.epsilon)
    view = param_view([s, t], ctx.in_types[0].shape[1:], _axis(ctx, op.axis))
    return _lower_view(view, affine_kernel, "batch_norm")


@register_kernel("prelu")
def lower_prelu(ctx: LowerContext) -> LoweredOp:
    view = param_view([ctx.weights[ctx.node.inputs[1]]], _sample(ctx), None)
    return _lower_view(view, prelu_kernel, "prelu")
