"""Activation layers: Activation, LeakyReLU, ELU, PReLU."""

from __future__ import annotations

import numpy as np

from keydnn.frontends.keras.activations import SUPPORTED_ACTIVATIONS, activation_op, emit_activation
from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_common import finite_number, is_int
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Activation, PRelu, Relu

__all__: list[str] = []


@register_converter("Activation", constraints=(
    "activation 'linear' (no node), " + ", ".join(repr(a) for a in SUPPORTED_ACTIVATIONS)
    + " (Keras semantics: 'gelu' exact, 'hard_sigmoid' as the Keras version that wrote the model, "
      "'leaky_relu' slope 0.2, 'softmax' and 'log_softmax' over the last axis, Keras's default parameters for "
      "celu, squareplus and the shrinks); 'glu', 'sparsemax' and 'threshold' are refused by name"))
def convert_activation(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    name = ctx.cfg("activation")
    try:
        op = activation_op(name, ctx.options.keras_major)
    except KeyError:
        shown = name if isinstance(name, str) else "a serialized custom function"
        ctx.refuse(f"unsupported activation {shown!r}", field="activation", value=name,
                   supported="'linear', " + ", ".join(repr(s) for s in SUPPORTED_ACTIVATIONS))
        raise Unconvertible
    if op is not None:
        emit_activation(ctx, op)


@register_converter("LeakyReLU", constraints=(
    "negative_slope (Keras 3) / alpha (Keras 2), any finite value (a negative one lowers to prelu)"))
def convert_leaky_relu(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    given = {key: ctx.cfg(key) for key in ("negative_slope", "alpha") if key in ctx.layer.config}
    if len({repr(v) for v in given.values()}) > 1:
        ctx.refuse(f"negative_slope and alpha disagree: {given}", field="alpha", value=given.get("alpha"),
                   supported="one of them (Keras 3 calls it negative_slope, Keras 2 alpha)")
        raise Unconvertible
    key = next(iter(given), "negative_slope")
    slope = finite_number(ctx, key, 0.3)
    if slope >= 0:
        ctx.emit(Relu(negative_slope=slope))
    else:  # max(x, 0) + slope * min(x, 0) is leaky_relu for any slope
        ctx.emit(PRelu(), ctx.add_constant("negative_slope", np.asarray([slope])))


@register_converter("ELU", constraints="alpha (any finite value)")
def convert_elu(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    alpha = finite_number(ctx, "alpha", 1.0)
    ctx.emit(Activation(function="elu", alpha=alpha))


@register_converter("PReLU", constraints=(
    "learned alpha of the sample's shape, shared_axes None / an int / a list; any input rank and layout"))
def convert_prelu(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    shared = ctx.cfg("shared_axes")
    x = ctx.need_type()
    if shared is None:
        axes: list = []
    elif is_int(shared):
        axes = [shared]
    else:
        axes = list(shared) if isinstance(shared, list) else [None]
    if not all(is_int(a) and 1 <= a < x.rank for a in axes):
        ctx.refuse(f"invalid shared_axes {shared!r}", field="shared_axes", value=shared,
                   supported=f"None or axes in 1..{x.rank - 1} (axis 0 is the batch)")
        raise Unconvertible
    alpha = ctx.weight("alpha")
    want = tuple(1 if i in axes else d for i, d in enumerate(x.shape[1:], start=1))
    if alpha.shape != want:
        ctx.refuse(f"alpha weight has shape {list(alpha.shape)}, expected {list(want)} for input {x} "
                   f"and shared_axes {shared!r}")
        raise Unconvertible
    ctx.emit(PRelu(), ctx.add_constant("alpha", alpha))
