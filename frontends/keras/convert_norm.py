"""Normalizing layers: BatchNormalization (-> batch_norm), Rescaling and Normalization (-> scale_shift)."""

from __future__ import annotations

import numpy as np

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_common import is_int, is_number, numeric_array
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import BatchNorm, ScaleShift

__all__ = ["emit_affine", "KERAS_EPSILON"]

#: ``keras.backend.epsilon()`` at its default; Normalization divides by max(sqrt(variance), this).
KERAS_EPSILON = 1e-7


def _channel_axis(ctx: LayerContext, value: object, rank: int) -> int:
    """One non-batch axis of the input (an int, or Keras 2's one-element list), made non-negative."""
    axis = value[0] if isinstance(value, list) and len(value) == 1 else value
    if not is_int(axis) or not -rank <= axis < rank or axis % rank == 0:  # type: ignore[operator]
        ctx.refuse(f"unsupported axis {value!r}", field="axis", value=value,
                   supported=f"one axis in 1..{rank - 1} or -{rank - 1}..-1 (not the batch axis)")
        raise Unconvertible
    return int(axis) % rank  # type: ignore[arg-type]


@register_converter("BatchNormalization", constraints=(
    "inference form (moving_mean, moving_variance, epsilon), center/scale on or off, any one channel "
    "axis (also Keras 2's one-element list), any input rank; folded away by fold-batchnorm"))
def convert_batch_norm(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    axis_cfg = ctx.cfg("axis", -1)
    epsilon = ctx.cfg("epsilon", 1e-3)
    eps_ok = is_number(epsilon) and epsilon >= 0
    ctx.require(eps_ok, f"invalid epsilon {epsilon!r}", field="epsilon", value=epsilon,
                supported="a finite number >= 0")
    center = ctx.check_in("center", (True, False), True)
    scale = ctx.check_in("scale", (True, False), True)
    vbs = ctx.cfg("virtual_batch_size")
    ctx.require(vbs is None, f"unsupported virtual_batch_size {vbs!r}", field="virtual_batch_size", value=vbs,
                supported="None")
    ctx.ignore("fused")  # which TensorFlow kernel runs it, not what it computes
    x = ctx.need_type()
    axis = _channel_axis(ctx, axis_cfg, x.rank)
    if not eps_ok:
        raise Unconvertible
    channels = x.shape[axis]
    params = {"mean": ctx.weight("moving_mean"), "variance": ctx.weight("moving_variance"),
              "gamma": ctx.weight("gamma") if scale else np.ones(channels),
              "beta": ctx.weight("beta") if center else np.zeros(channels)}
    for what, array in params.items():
        if array.shape != (channels,):
            ctx.refuse(f"{what} has shape {list(array.shape)}, expected ({channels},) for axis {axis} of {x}")
            raise Unconvertible
    if np.any(params["variance"] < 0):
        ctx.refuse("moving_variance has negative entries", field="moving_variance")
        raise Unconvertible
    names = [ctx.add_constant(name, params[key]) for key, name in
             (("mean", "moving_mean"), ("variance", "moving_variance"), ("gamma", "gamma"), ("beta", "beta"))]
    ctx.emit(BatchNorm(epsilon=float(epsilon), axis=axis), *names)


def emit_affine(ctx: LayerContext, scale: np.ndarray, shift: np.ndarray) -> None:
    """Emit ``x * scale + shift`` for parameters that broadcast (NumPy rules) against the input, batch included.

    One-axis parameters become the per-channel ``scale_shift`` form, anything else the broadcast form.
    """
    x = ctx.need_type()
    sample = x.shape[1:]
    params = []
    for what, p in (("scale", scale), ("offset", shift)):
        p = np.asarray(p, dtype=np.float64)
        if p.ndim > len(sample):
            if any(d != 1 for d in p.shape[: p.ndim - len(sample)]):
                ctx.refuse(f"{what} of shape {list(p.shape)} does not broadcast to the input {x}")
                raise Unconvertible
            p = p.reshape(p.shape[p.ndim - len(sample):])
        p = p.reshape((1,) * (len(sample) - p.ndim) + p.shape)
        if any(d != 1 and d != s for d, s in zip(p.shape, sample)):
            ctx.refuse(f"{what} of shape {list(p.shape)} does not broadcast to the input {x} without growing it")
            raise Unconvertible
        params.append(p)
    varying = {i for p in params for i, d in enumerate(p.shape) if d != 1}
    if not varying:
        args = [np.reshape(p, (1,)) for p in params]
        op = ScaleShift(axis=None)
    elif len(varying) == 1:
        (i,) = varying
        args = [p.reshape(-1) for p in params]
        op = ScaleShift(axis=i + 1)
    else:
        args, op = params, ScaleShift(axis=None)
    ctx.emit(op, ctx.add_constant("scale", args[0]), ctx.add_constant("shift", args[1]))


@register_converter("Rescaling", constraints=(
    "scale and offset: numbers, or lists / arrays that broadcast against the input (per-channel and per-pixel)"))
def convert_rescaling(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    scale = numeric_array(ctx, "scale", ctx.cfg("scale", 1.0))
    offset = numeric_array(ctx, "offset", ctx.cfg("offset", 0.0))
    emit_affine(ctx, scale, offset)


def _kept_axes(ctx: LayerContext, value: object, rank: int) -> list[int]:
    axes = [] if value is None else [value] if is_int(value) else value
    if not isinstance(axes, list) or not all(is_int(a) and -rank <= a < rank and a % rank != 0 for a in axes):
        ctx.refuse(f"unsupported axis {value!r}", field="axis", value=value,
                   supported=f"None, or non-batch axes in -{rank - 1}..{rank - 1}")
        raise Unconvertible
    return sorted({int(a) % rank for a in axes})


@register_converter("Normalization", constraints=(
    "adapted (mean/variance weights) or config mean/variance, any axis / axes, invert true or false; "
    "y = (x - mean) / max(sqrt(variance), 1e-7) (Keras' default epsilon)"))
def convert_normalization(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    axis_cfg = ctx.cfg("axis", -1)
    invert = ctx.check_in("invert", (False, True), False)
    mean_cfg, var_cfg = ctx.cfg("mean"), ctx.cfg("variance")
    x = ctx.need_type()
    keep = _kept_axes(ctx, axis_cfg, x.rank)
    if mean_cfg is None and var_cfg is None:
        mean, variance = ctx.weight("mean").astype(np.float64), ctx.weight("variance").astype(np.float64)
    elif mean_cfg is not None and var_cfg is not None:
        mean, variance = numeric_array(ctx, "mean", mean_cfg), numeric_array(ctx, "variance", var_cfg)
    else:
        ctx.refuse("only one of mean and variance is set", field="mean" if mean_cfg is None else "variance",
                   supported="both (constants) or neither (adapted weights)")
        raise Unconvertible
    kept_shape = tuple(x.shape[a] for a in keep)
    full = tuple(x.shape[a] if a in keep else 1 for a in range(x.rank))
    try:
        mean = np.broadcast_to(mean, kept_shape).reshape(full)
        variance = np.broadcast_to(variance, kept_shape).reshape(full)
    except ValueError:
        ctx.refuse(f"mean {list(np.shape(mean))} / variance {list(np.shape(variance))} do not fit the kept axes "
                   f"{keep} of {x}")
        raise Unconvertible
    if np.any(variance < 0):
        ctx.refuse("variance has negative entries", field="variance")
        raise Unconvertible
    std = np.maximum(np.sqrt(variance), KERAS_EPSILON)
    if invert:
        emit_affine(ctx, std, mean)
    else:
        emit_affine(ctx, 1.0 / std, -mean / std)
