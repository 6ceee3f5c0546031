"""The normalizing layers that compute statistics per sample: LayerNormalization, RMSNormalization,
GroupNormalization, UnitNormalization. Each becomes one ``layer_norm`` node (GroupNormalization: between
two reshapes that split the channel axis into groups, then a per-channel ``scale_shift``)."""

from __future__ import annotations

import numpy as np

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_common import is_int, is_number
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import LayerNorm, Reshape, ScaleShift

__all__: list[str] = []


def _axes(ctx: LayerContext, rank: int, default: object = -1) -> tuple[list[int], list[int]]:
    """(axes as written, made non-negative; the same, sorted): an int or a list of non-batch axes."""
    value = ctx.cfg("axis", default)
    axes = [value] if is_int(value) else value
    ok = isinstance(axes, list) and axes and all(is_int(a) and -rank <= a < rank and a % rank != 0 for a in axes)
    if not ok or len({a % rank for a in axes}) != len(axes):
        ctx.refuse(f"unsupported axis {value!r}", field="axis", value=value,
                   supported=f"an int or a list of distinct non-batch axes in -{rank - 1}..{rank - 1}")
        raise Unconvertible
    return [int(a) for a in axes], sorted(int(a) % rank for a in axes)


def _epsilon(ctx: LayerContext, default: float) -> float:
    eps = ctx.cfg("epsilon", default)
    if not (is_number(eps) and eps >= 0):
        ctx.refuse(f"invalid epsilon {eps!r}", field="epsilon", value=eps, supported="a finite number >= 0")
        raise Unconvertible
    return float(eps)


def _sample_param(ctx: LayerContext, what: str, array: np.ndarray, shape: tuple, axes: list[int]) -> np.ndarray:
    """A weight over the normalized axes, reshaped (as Keras does: row-major) to the broadcast sample shape."""
    target = tuple(shape[i] if i in axes else 1 for i in range(1, len(shape)))
    if not all(isinstance(d, int) for d in target) or array.size != int(np.prod(target)):
        ctx.refuse(f"{what} has shape {list(array.shape)}, which does not fit axes {axes} of the input {shape}")
        raise Unconvertible
    return np.asarray(array, np.float64).reshape(target)


def _emit(ctx: LayerContext, op: LayerNorm, gamma: np.ndarray | float, beta: np.ndarray | float) -> None:
    g = np.asarray(gamma, np.float64).reshape(np.shape(gamma) or (1,))
    b = np.asarray(beta, np.float64).reshape(np.shape(beta) or (1,))
    ctx.emit(op, ctx.add_constant("gamma", g), ctx.add_constant("beta", b))


@register_converter("LayerNormalization", constraints=(
    "any axis or list of axes (not the batch axis), epsilon, center/scale on or off, rms_scaling (Keras 3: "
    "x * rsqrt(variance + epsilon) * gamma, the mean is not subtracted); one layer_norm node"))
def convert_layer_norm(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    x = ctx.need_type()
    _, axes = _axes(ctx, x.rank)
    eps = _epsilon(ctx, 1e-3)
    center = ctx.check_in("center", (True, False), True)
    scale = ctx.check_in("scale", (True, False), True)
    rms = ctx.check_in("rms_scaling", (False, True), False)
    if rms:
        gamma = _sample_param(ctx, "gamma", ctx.weight("gamma"), x.shape, axes)
        _emit(ctx, LayerNorm(axes=tuple(axes), epsilon=eps, center=False), gamma, 0.0)
        return
    gamma = _sample_param(ctx, "gamma", ctx.weight("gamma"), x.shape, axes) if scale else 1.0
    beta = _sample_param(ctx, "beta", ctx.weight("beta"), x.shape, axes) if center else 0.0
    _emit(ctx, LayerNorm(axes=tuple(axes), epsilon=eps), gamma, beta)


@register_converter("RMSNormalization", constraints=(
    "any axis or list of axes, epsilon: x * rsqrt(mean(x^2) + epsilon) * scale; one layer_norm node"))
def convert_rms_norm(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    x = ctx.need_type()
    _, axes = _axes(ctx, x.rank)
    eps = _epsilon(ctx, 1e-6)
    scale = _sample_param(ctx, "scale", ctx.weight("scale"), x.shape, axes)
    _emit(ctx, LayerNorm(axes=tuple(axes), epsilon=eps, center=False, statistic="mean_square"), scale, 0.0)


@register_converter("UnitNormalization", constraints=(
    "any axis or list of axes: x / max(||x||_2, 1e-12) (Keras 3), x * rsqrt(max(||x||^2, 1e-12)) (Keras 2's "
    "tf.math.l2_normalize); one layer_norm node"))
def convert_unit_norm(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    x = ctx.need_type()
    _, axes = _axes(ctx, x.rank)
    floor = 1e-24 if ctx.options.keras_major >= 3 else 1e-12  # on the squared norm
    _emit(ctx, LayerNorm(axes=tuple(axes), epsilon=floor, center=False, statistic="sum_square", eps_mode="max"),
          1.0, 0.0)


@register_converter("GroupNormalization", constraints=(
    "groups (a divisor of the channels, or -1: one per channel), any one channel axis, epsilon, center/scale "
    "on or off; a layer_norm over each group (between reshapes), then a per-channel scale_shift"))
def convert_group_norm(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    x = ctx.need_type()
    axis_cfg = ctx.cfg("axis", -1)
    if not (is_int(axis_cfg) and -x.rank <= axis_cfg < x.rank and axis_cfg % x.rank != 0):
        ctx.refuse(f"unsupported axis {axis_cfg!r}", field="axis", value=axis_cfg,
                   supported=f"one non-batch axis in -{x.rank - 1}..{x.rank - 1}")
        raise Unconvertible
    axis = int(axis_cfg) % x.rank
    eps = _epsilon(ctx, 1e-3)
    center = ctx.check_in("center", (True, False), True)
    scale = ctx.check_in("scale", (True, False), True)
    groups = ctx.cfg("groups", 32)
    channels = x.shape[axis]
    if not all(isinstance(d, int) for d in x.shape[1:]):
        ctx.refuse(f"needs a static input shape, got {x}")
        raise Unconvertible
    if groups == -1:
        groups = channels
    if not (is_int(groups) and groups >= 1 and channels % groups == 0):
        ctx.refuse(f"groups {groups!r} does not divide the {channels} channels", field="groups", value=groups,
                   supported="a positive divisor of the channel count, or -1")
        raise Unconvertible
    sample = list(x.shape[1:])
    grouped = sample[: axis - 1] + [groups, channels // groups] + sample[axis:]
    ctx.emit(Reshape(shape=tuple(grouped)), suffix="groups")
    axes = tuple(i for i in range(1, len(grouped) + 1) if i != axis)  # all but the group axis
    ctx.emit(LayerNorm(axes=axes, epsilon=eps), ctx.add_constant("ones", np.ones(1)),
             ctx.add_constant("zeros", np.zeros(1)), suffix="norm")
    ctx.emit(Reshape(shape=tuple(sample)), suffix="ungroup")
    gamma = ctx.weight("gamma") if scale else np.ones(channels)
    beta = ctx.weight("beta") if center else np.zeros(channels)
    ctx.emit(ScaleShift(axis=axis), ctx.add_constant("gamma", gamma), ctx.add_constant("beta", beta))
