"""Keras activation names -> IR ops, shared by fused activations and Activation layers."""

from __future__ import annotations

from typing import Any

from keydnn.frontends.keras.registry import LayerContext
from keydnn.ir.ops import Activation, OpBase, Relu, Softmax

__all__ = ["activation_op", "emit_fused_activation", "SUPPORTED_ACTIVATIONS"]


def _hard_sigmoid(keras_major: int) -> OpBase:
    # Keras 3 redefined hard_sigmoid as relu6(x + 3) / 6; Keras 2 used clip(0.2x + 0.5).
    return Activation(function="hard_sigmoid" if keras_major >= 3 else "hard_sigmoid_k2")


_TABLE: dict[str, Any] = {
    "relu": lambda k: Relu(),
    "relu6": lambda k: Relu(max_value=6.0),
    "leaky_relu": lambda k: Relu(negative_slope=0.2),
    "softmax": lambda k: Softmax(axis=-1),
    "sigmoid": lambda k: Activation(function="sigmoid"),
    "tanh": lambda k: Activation(function="tanh"),
    "softplus": lambda k: Activation(function="softplus"),
    "softsign": lambda k: Activation(function="softsign"),
    "elu": lambda k: Activation(function="elu"),
    "selu": lambda k: Activation(function="selu"),
    "gelu": lambda k: Activation(function="gelu"),
    "swish": lambda k: Activation(function="swish"),
    "silu": lambda k: Activation(function="swish"),
    "exponential": lambda k: Activation(function="exponential"),
    "hard_sigmoid": _hard_sigmoid,
}

#: Names accepted for ``activation=`` (besides "linear").
SUPPORTED_ACTIVATIONS: tuple[str, ...] = tuple(sorted(_TABLE))


def activation_op(name: Any, keras_major: int) -> OpBase | None:
    """The IR op for a Keras activation name, ``None`` for linear; KeyError if unknown."""
    if name in (None, "linear"):
        return None
    if not isinstance(name, str):
        raise KeyError(name)
    return _TABLE[name](keras_major)


def emit_fused_activation(ctx: LayerContext) -> None:
    """Lower a layer's ``activation=`` field to an explicit node after the layer's own op.

    'linear' needs nothing; anything else is only accepted when the user opted in
    with ``allow_non_linear_activation`` — and then it is lowered, never dropped.
    """
    name = ctx.cfg("activation", "linear")
    try:
        op = activation_op(name, ctx.options.keras_major)
    except KeyError:
        shown = name if isinstance(name, str) else "a serialized custom function"
        ctx.refuse(f"unsupported activation {shown!r}", field="activation", value=name,
                   supported="'linear', " + ", ".join(repr(s) for s in SUPPORTED_ACTIVATIONS))
        return
    if op is None:
        return
    if not ctx.options.allow_non_linear_activation:
        ctx.refuse(
            f"fused non-linear activation {name!r} is not enabled: pass allow_non_linear_activation=True "
            f"(CLI: --allow-non-linear-activation) and keydnn lowers it into its own exact {name!r} node",
            field="activation", value=name,
            supported="'linear' (then a separate activation layer); others with allow_non_linear_activation=True",
        )
        return
    ctx.emit(op, suffix=name)
