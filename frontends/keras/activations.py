"""Keras activation names -> IR ops, shared by fused activations and Activation layers."""

from __future__ import annotations

from typing import Any

from keydnn.frontends.keras.registry import LayerContext
from keydnn.ir.ops import Activation, Binary, OpBase, Reduce, Relu, Softmax, Unary

__all__ = ["activation_op", "emit_fused_activation", "emit_activation", "SUPPORTED_ACTIVATIONS",
           "REFUSED_ACTIVATIONS"]


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
    # Keras 3's newer activations (and Keras 2's mish), as unary ops with Keras's default parameters
    "hard_silu": lambda k: Unary(function="hard_silu"),
    "hard_swish": lambda k: Unary(function="hard_silu"),
    "mish": lambda k: Unary(function="mish"),
    "celu": lambda k: Unary(function="celu", a=1.0),
    "hard_tanh": lambda k: Unary(function="hard_tanh"),
    "hard_shrink": lambda k: Unary(function="hard_shrink", a=0.5),
    "soft_shrink": lambda k: Unary(function="soft_shrink", a=0.5),
    "tanh_shrink": lambda k: Unary(function="tanh_shrink"),
    "log_sigmoid": lambda k: Unary(function="log_sigmoid"),
    "sparse_plus": lambda k: Unary(function="sparse_plus"),
    "sparse_sigmoid": lambda k: Unary(function="sparse_sigmoid"),
    "squareplus": lambda k: Unary(function="squareplus", a=4.0),
    # log_softmax over the last axis: x - max - log(sum(exp(x - max))), several nodes (emit_activation)
    "log_softmax": lambda k: _LOG_SOFTMAX,
}

#: Keras activations with no keydnn lowering, refused by name: glu halves the last axis, sparsemax sorts,
#: threshold has no defaults for its two parameters (it cannot be named as activation=).
REFUSED_ACTIVATIONS: tuple[str, ...] = ("glu", "sparsemax", "threshold")


class _LogSoftmax(Softmax):
    """Marker for ``emit_activation``: log_softmax over the last axis, lowered to several nodes."""


_LOG_SOFTMAX = _LogSoftmax(axis=-1)

#: Names accepted for ``activation=`` (besides "linear").
SUPPORTED_ACTIVATIONS: tuple[str, ...] = tuple(sorted(_TABLE))


def activation_op(name: Any, keras_major: int) -> OpBase | None:
    """The IR op for a Keras activation name, ``None`` for linear; KeyError if unknown."""
    if name in (None, "linear"):
        return None
    if not isinstance(name, str):
        raise KeyError(name)
    return _TABLE[name](keras_major)


def emit_activation(ctx: LayerContext, op: OpBase, suffix: str | None = None) -> None:
    """Emit ``op`` on the current value; log_softmax becomes reduce/binary/unary nodes (exact in float64
    terms, unlike log(softmax(x)), which underflows)."""
    if not isinstance(op, _LogSoftmax):
        ctx.emit(op, suffix=suffix)
        return
    base = suffix or "log_softmax"
    x = ctx.x
    rank = ctx.need_type().rank
    m = ctx.emit(Reduce(mode="max", axes=(rank - 1,), keepdims=True), suffix=f"{base}.max")
    ctx.x, ctx.x_type = x, ctx.type_of(x)
    d = ctx.emit(Binary(function="sub"), m, suffix=f"{base}.shifted")
    ctx.emit(Unary(function="exp"), suffix=f"{base}.exp")
    ctx.emit(Reduce(mode="sum", axes=(rank - 1,), keepdims=True), suffix=f"{base}.sum")
    lg = ctx.emit(Unary(function="log"), suffix=f"{base}.log")
    ctx.x, ctx.x_type = d, ctx.type_of(d)
    ctx.emit(Binary(function="sub"), lg, suffix=suffix)


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
    emit_activation(ctx, op, suffix=name)
