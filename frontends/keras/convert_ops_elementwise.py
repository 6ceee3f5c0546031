"""Converters of elementwise Keras operations (arithmetic, comparisons, math, activations): see ``convert_ops``."""

from __future__ import annotations

from keydnn.frontends.keras.convert_ops import (
    OpCall,
    axis_arg,
    number_arg,
    one_tensor,
    register_operation,
)
from keydnn.ir.ops import (
    Activation,
    Binary,
    Reduce,
    Relu,
    Softmax,
    Unary,
)

# --------------------------------------------------------------------------- #
# Elementwise
# --------------------------------------------------------------------------- #

_BINARY = {
    "Add": "add", "Subtract": "sub", "Multiply": "mul", "TrueDivide": "div", "Divide": "div", "Power": "pow",
    "Maximum": "max", "Minimum": "min", "Greater": "greater", "GreaterEqual": "greater_equal", "Less": "less",
    "LessEqual": "less_equal", "Equal": "equal", "NotEqual": "not_equal",
}


@register_operation(*_BINARY, constraints="two operands (tensors or numbers), NumPy broadcasting; comparisons "
                    "give 1.0 / 0.0")
def _binary(call: OpCall) -> None:
    if len(call.args) != 2:
        call.refuse(f"takes two operands, got {len(call.args)}", field="args")
    x, y = call.operand(call.args[0]), call.operand(call.args[1])
    if x in call.ctx.weights and y in call.ctx.weights:
        call.refuse("both operands are constants", field="args")
    call.emit(Binary(function=_BINARY[call.ctx.layer.class_name]), x, y)  # type: ignore[arg-type]


_UNARY = {
    "Negative": "neg", "Absolute": "abs", "Abs": "abs", "Sqrt": "sqrt", "Rsqrt": "rsqrt", "Square": "square",
    "Exp": "exp", "Log": "log", "Reciprocal": "reciprocal", "Sign": "sign", "Floor": "floor", "Ceil": "ceil",
    "Sin": "sin", "Cos": "cos", "Erf": "erf", "Log1p": "log1p", "Expm1": "expm1", "HardSilu": "hard_silu",
    "HardSwish": "hard_silu", "Mish": "mish", "LogSigmoid": "log_sigmoid", "SparsePlus": "sparse_plus",
    "HardTanh": "hard_tanh", "TanhShrink": "tanh_shrink", "SparseSigmoid": "sparse_sigmoid",
}




@register_operation(*_UNARY, constraints="elementwise, one tensor")
def _unary(call: OpCall) -> None:
    call.emit(Unary(function=_UNARY[call.ctx.layer.class_name]), one_tensor(call))  # type: ignore[arg-type]


@register_operation("Round", constraints="decimals 0 (half to even)")
def _round(call: OpCall) -> None:
    decimals = call.ctx.cfg("decimals", 0)
    if decimals != 0:
        call.refuse(f"unsupported decimals {decimals!r}", field="decimals", value=decimals, supported="0")
    call.emit(Unary(function="round"), one_tensor(call))




@register_operation("Clip", constraints="x_min, x_max numbers")
def _clip(call: OpCall) -> None:
    lo, hi = number_arg(call, "x_min", None), number_arg(call, "x_max", None)
    call.emit(Unary(function="clip", a=lo, b=hi), one_tensor(call))


@register_operation("Celu", constraints="alpha")
def _celu(call: OpCall) -> None:
    call.emit(Unary(function="celu", a=number_arg(call, "alpha", 1.0)), one_tensor(call))


@register_operation("Squareplus", constraints="b >= 0")
def _squareplus(call: OpCall) -> None:
    call.emit(Unary(function="squareplus", a=number_arg(call, "b", 4.0)), one_tensor(call))


@register_operation("SoftShrink", "HardShrink", constraints="threshold")
def _shrink(call: OpCall) -> None:
    fn = "soft_shrink" if call.ctx.layer.class_name == "SoftShrink" else "hard_shrink"
    call.emit(Unary(function=fn, a=number_arg(call, "threshold", 0.5)), one_tensor(call))  # type: ignore[arg-type]


@register_operation("Threshold", constraints="threshold, default_value")
def _threshold(call: OpCall) -> None:
    t, d = number_arg(call, "threshold", None), number_arg(call, "default_value", None)
    call.emit(Unary(function="threshold", a=t, b=d), one_tensor(call))


_ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Silu": "swish", "Swish": "swish", "Softplus": "softplus",
                "Softsign": "softsign", "Selu": "selu", "HardSigmoid": "hard_sigmoid"}


@register_operation(*_ACTIVATIONS, constraints="elementwise (Keras 3 semantics)")
def _activation(call: OpCall) -> None:
    call.emit(Activation(function=_ACTIVATIONS[call.ctx.layer.class_name]), one_tensor(call))  # type: ignore


@register_operation("Elu", constraints="alpha")
def _elu(call: OpCall) -> None:
    call.emit(Activation(function="elu", alpha=number_arg(call, "alpha", 1.0)), one_tensor(call))


@register_operation("Gelu", constraints="approximate true (tanh form) or false (erf)")
def _gelu(call: OpCall) -> None:
    approx = call.ctx.check_in("approximate", (True, False), True)
    call.emit(Activation(function="gelu_tanh" if approx else "gelu"), one_tensor(call))


@register_operation("Relu", "Relu6", "LeakyRelu", "ReLU", constraints="relu, relu6, leaky_relu(negative_slope >= 0), "
                    "keras.activations.relu(negative_slope, max_value, threshold)")
def _relu(call: OpCall) -> None:
    name = call.ctx.layer.class_name
    if name == "Relu":
        op = Relu()
    elif name == "Relu6":
        op = Relu(max_value=6.0)
    elif name == "LeakyRelu":
        op = Relu(negative_slope=number_arg(call, "negative_slope", 0.2))
    else:
        max_value = call.ctx.cfg("max_value")
        op = Relu(negative_slope=number_arg(call, "negative_slope", 0.0), threshold=number_arg(call, "threshold", 0.0),
                  max_value=None if max_value is None else number_arg(call, "max_value", None))
    call.emit(op, one_tensor(call))




@register_operation("Softmax", constraints="any one non-batch axis")
def _softmax(call: OpCall) -> None:
    x = one_tensor(call)
    call.emit(Softmax(axis=axis_arg(call, "axis", call.type_of(x).rank)), x)


@register_operation("LogSoftmax", constraints="any one non-batch axis; x - max - log(sum(exp(x - max)))")
def _log_softmax(call: OpCall) -> None:
    x = one_tensor(call)
    axis = axis_arg(call, "axis", call.type_of(x).rank)
    m = call.emit(Reduce(mode="max", axes=(axis,), keepdims=True), x, last=False)
    d = call.emit(Binary(function="sub"), x, m, last=False)
    e = call.emit(Unary(function="exp"), d, last=False)
    s = call.emit(Reduce(mode="sum", axes=(axis,), keepdims=True), e, last=False)
    lg = call.emit(Unary(function="log"), s, last=False)
    call.emit(Binary(function="sub"), d, lg)
