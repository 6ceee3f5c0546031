"""Keras 3 operations used as graph nodes (``x * 0.5``, ``keras.ops.mean(x, axis=-1)``, ``x[:, 1:3]``),
converted by an allow-list keyed by the operation's class name.

An operation node carries its arguments in the recorded call (tensors and
constants side by side) and its options in its config. ``OpCall`` gives a
converter both, with every tensor argument replaced by the IR value it maps
to; the converter emits IR nodes (``binary``, ``unary``, ``reduce``, ...) and
reads every config field it honours, so an option nobody reads is refused by
name, as for layers. An operation missing from ``OPERATIONS`` is refused
naming it; ``Lambda`` layers stay refused (they hold code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from keydnn.frontends.keras.convert_common import is_int, is_number
from keydnn.frontends.keras.registry import LayerContext, Unconvertible
from keydnn.ir.ops import (
    Activation, Binary, Concat, ExpandDims, MatMul, OpBase, Reduce, Relu, Reshape, Slice, Softmax, Squeeze,
    Transpose, Unary,
)

__all__ = ["OPERATIONS", "OpCall", "convert_operation", "register_operation", "operation_docs"]


@dataclass(frozen=True)
class Tensor:
    """A tensor argument of an operation call: the IR value it maps to."""

    name: str


class OpCall:
    """One call of an operation: its arguments (tensors as ``Tensor``), keyword arguments and context."""

    def __init__(self, ctx: LayerContext, raw: Any, inputs: tuple[str, ...]) -> None:
        self.ctx = ctx
        feed = iter(inputs)
        raw = raw if isinstance(raw, dict) else {}
        self.args = [self._sub(a, feed) for a in raw.get("args", []) or []]
        kwargs = raw.get("kwargs", {}) or {}
        self.kwargs = {k: self._sub(kwargs[k], feed) for k in kwargs} if isinstance(kwargs, dict) else {}
        self._suffix = 0

    def _sub(self, value: Any, feed) -> Any:
        if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
            return Tensor(next(feed))
        if isinstance(value, list):
            return [self._sub(v, feed) for v in value]
        return value

    # -- reading arguments ----------------------------------------------------------------
    def arg(self, position: int, key: str | None = None, default: Any = None) -> Any:
        if position < len(self.args):
            return self.args[position]
        if key is not None and key in self.kwargs:
            return self.kwargs[key]
        return default

    def refuse(self, message: str, **kw: Any) -> None:
        self.ctx.refuse(message, **kw)
        raise Unconvertible

    def operand(self, value: Any, what: str = "operand") -> str:
        """A tensor argument's value name, or a number / nested list of numbers as a constant."""
        if isinstance(value, Tensor):
            return value.name
        if (isinstance(value, dict) and value.get("class_name") in ("__numpy__", "__tensor__")
                and isinstance(value.get("config"), dict)):  # a NumPy array / constant tensor argument
            value = value["config"].get("value")
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            array = None
        if array is None or array.dtype == object or not np.all(np.isfinite(array)) or isinstance(value, bool):
            self.refuse(f"unsupported {what} {value!r}", field="args", value=value,
                        supported="tensors and finite numbers (or lists of them)")
        self._suffix += 1
        return self.ctx.add_constant(f"c{self._suffix}", array.reshape(array.shape or (1,)))

    def tensor(self, position: int, key: str | None = None) -> str:
        value = self.arg(position, key)
        if not isinstance(value, Tensor):
            self.refuse(f"argument {position} must be a tensor, got {value!r}", field="args", value=value)
        return value.name

    def type_of(self, name: str):
        return self.ctx._type_of(name)

    # -- emitting -------------------------------------------------------------------------
    def emit(self, op: OpBase, *inputs: str, last: bool = True) -> str:
        """A node applying ``op`` to ``inputs``; ``last=False`` for intermediate nodes (suffixed names)."""
        ctx = self.ctx
        ctx.x, ctx.x_type = inputs[0], ctx._type_of(inputs[0])
        if not last:
            self._suffix += 1
        return ctx.emit(op, *inputs[1:], suffix=None if last else f"s{self._suffix}")


OpConverter = Callable[[OpCall], None]


@dataclass(frozen=True)
class OperationEntry:
    fn: OpConverter
    constraints: str


#: Operation class name -> converter (Keras 3 ``keras.src.ops.*`` and ``keras.src.activations`` classes).
OPERATIONS: dict[str, OperationEntry] = {}


def register_operation(*class_names: str, constraints: str = "") -> Callable[[OpConverter], OpConverter]:
    def deco(fn: OpConverter) -> OpConverter:
        for name in class_names:
            OPERATIONS[name] = OperationEntry(fn, constraints)
        return fn

    return deco


def convert_operation(ctx: LayerContext, raw_call: Any, inputs: tuple[str, ...]) -> None:
    """Convert one operation call (problems are recorded on ``ctx``; raises ``Unconvertible`` on failure)."""
    layer = ctx.layer
    entry = OPERATIONS.get(layer.class_name)
    if entry is None:
        ctx.refuse(f"Keras operation {layer.class_name!r} ({layer.module or 'keras.ops'}) is not supported",
                   field="class_name", value=layer.class_name,
                   supported="the operations listed by `keydnn layers` (arithmetic, comparisons, reductions, "
                   "math, matmul, reshape/transpose/expand_dims/squeeze, concatenate/stack, static slicing, "
                   "activations, cast to float)")
        raise Unconvertible
    if any(ctx._type_of(i) is None for i in inputs):
        ctx._input_unknown = True
        raise Unconvertible
    entry.fn(OpCall(ctx, raw_call, inputs))


def operation_docs() -> list[dict[str, str]]:
    """One row per supported operation class (for ``keydnn layers``)."""
    return [{"operation": name, "constraints": OPERATIONS[name].constraints} for name in sorted(OPERATIONS)]


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


def _one_tensor(call: OpCall) -> str:
    if len(call.args) != 1 or not isinstance(call.args[0], Tensor):
        call.refuse(f"takes one tensor argument, got {call.args!r}", field="args")
    return call.args[0].name


@register_operation(*_UNARY, constraints="elementwise, one tensor")
def _unary(call: OpCall) -> None:
    call.emit(Unary(function=_UNARY[call.ctx.layer.class_name]), _one_tensor(call))  # type: ignore[arg-type]


@register_operation("Round", constraints="decimals 0 (half to even)")
def _round(call: OpCall) -> None:
    decimals = call.ctx.cfg("decimals", 0)
    if decimals != 0:
        call.refuse(f"unsupported decimals {decimals!r}", field="decimals", value=decimals, supported="0")
    call.emit(Unary(function="round"), _one_tensor(call))


def _number(call: OpCall, key: str, default: Any) -> float:
    value = call.ctx.cfg(key, default)
    if not is_number(value):
        call.refuse(f"unsupported {key} {value!r}", field=key, value=value, supported="a finite number")
    return float(value)


@register_operation("Clip", constraints="x_min, x_max numbers")
def _clip(call: OpCall) -> None:
    lo, hi = _number(call, "x_min", None), _number(call, "x_max", None)
    call.emit(Unary(function="clip", a=lo, b=hi), _one_tensor(call))


@register_operation("Celu", constraints="alpha")
def _celu(call: OpCall) -> None:
    call.emit(Unary(function="celu", a=_number(call, "alpha", 1.0)), _one_tensor(call))


@register_operation("Squareplus", constraints="b >= 0")
def _squareplus(call: OpCall) -> None:
    call.emit(Unary(function="squareplus", a=_number(call, "b", 4.0)), _one_tensor(call))


@register_operation("SoftShrink", "HardShrink", constraints="threshold")
def _shrink(call: OpCall) -> None:
    fn = "soft_shrink" if call.ctx.layer.class_name == "SoftShrink" else "hard_shrink"
    call.emit(Unary(function=fn, a=_number(call, "threshold", 0.5)), _one_tensor(call))  # type: ignore[arg-type]


@register_operation("Threshold", constraints="threshold, default_value")
def _threshold(call: OpCall) -> None:
    t, d = _number(call, "threshold", None), _number(call, "default_value", None)
    call.emit(Unary(function="threshold", a=t, b=d), _one_tensor(call))


_ACTIVATIONS = {"Sigmoid": "sigmoid", "Tanh": "tanh", "Silu": "swish", "Swish": "swish", "Softplus": "softplus",
                "Softsign": "softsign", "Selu": "selu", "HardSigmoid": "hard_sigmoid"}


@register_operation(*_ACTIVATIONS, constraints="elementwise (Keras 3 semantics)")
def _activation(call: OpCall) -> None:
    call.emit(Activation(function=_ACTIVATIONS[call.ctx.layer.class_name]), _one_tensor(call))  # type: ignore


@register_operation("Elu", constraints="alpha")
def _elu(call: OpCall) -> None:
    call.emit(Activation(function="elu", alpha=_number(call, "alpha", 1.0)), _one_tensor(call))


@register_operation("Gelu", constraints="approximate true (tanh form) or false (erf)")
def _gelu(call: OpCall) -> None:
    approx = call.ctx.check_in("approximate", (True, False), True)
    call.emit(Activation(function="gelu_tanh" if approx else "gelu"), _one_tensor(call))


@register_operation("Relu", "Relu6", "LeakyRelu", "ReLU", constraints="relu, relu6, leaky_relu(negative_slope >= 0), "
                    "keras.activations.relu(negative_slope, max_value, threshold)")
def _relu(call: OpCall) -> None:
    name = call.ctx.layer.class_name
    if name == "Relu":
        op = Relu()
    elif name == "Relu6":
        op = Relu(max_value=6.0)
    elif name == "LeakyRelu":
        op = Relu(negative_slope=_number(call, "negative_slope", 0.2))
    else:
        max_value = call.ctx.cfg("max_value")
        op = Relu(negative_slope=_number(call, "negative_slope", 0.0), threshold=_number(call, "threshold", 0.0),
                  max_value=None if max_value is None else _number(call, "max_value", None))
    call.emit(op, _one_tensor(call))


def _axis(call: OpCall, key: str, rank: int, *, allow_none: bool = False) -> int | None:
    value = call.ctx.cfg(key, -1)
    if value is None and allow_none:
        return None
    if not (is_int(value) and -rank <= value < rank and value % rank != 0):
        call.refuse(f"unsupported {key} {value!r}", field=key, value=value,
                    supported=f"one non-batch axis in -{rank - 1}..{rank - 1}")
    return int(value) % rank


@register_operation("Softmax", constraints="any one non-batch axis")
def _softmax(call: OpCall) -> None:
    x = _one_tensor(call)
    call.emit(Softmax(axis=_axis(call, "axis", call.type_of(x).rank)), x)


@register_operation("LogSoftmax", constraints="any one non-batch axis; x - max - log(sum(exp(x - max)))")
def _log_softmax(call: OpCall) -> None:
    x = _one_tensor(call)
    axis = _axis(call, "axis", call.type_of(x).rank)
    m = call.emit(Reduce(mode="max", axes=(axis,), keepdims=True), x, last=False)
    d = call.emit(Binary(function="sub"), x, m, last=False)
    e = call.emit(Unary(function="exp"), d, last=False)
    s = call.emit(Reduce(mode="sum", axes=(axis,), keepdims=True), e, last=False)
    lg = call.emit(Unary(function="log"), s, last=False)
    call.emit(Binary(function="sub"), d, lg)


# --------------------------------------------------------------------------- #
# Reductions, matmul, shapes
# --------------------------------------------------------------------------- #

_REDUCE = {"Mean": "mean", "Sum": "sum", "Max": "max", "Min": "min", "Amax": "max", "Amin": "min"}


@register_operation(*_REDUCE, constraints="axis (an int or a list of non-batch axes), keepdims; max/min without "
                    "initial")
def _reduce(call: OpCall) -> None:
    x = _one_tensor(call)
    rank = call.type_of(x).rank
    value = call.ctx.cfg("axis")
    keepdims = call.ctx.check_in("keepdims", (False, True), False)
    if "initial" in call.ctx.layer.config:
        initial = call.ctx.cfg("initial")
        if initial is not None:
            call.refuse(f"unsupported initial {initial!r}", field="initial", value=initial, supported="None")
    axes = [value] if is_int(value) else value
    if not (isinstance(axes, list) and axes and all(is_int(a) and -rank <= a < rank and a % rank for a in axes)):
        call.refuse(f"unsupported axis {value!r} (None or the batch axis reduces over the batch)", field="axis",
                    value=value, supported="an int or a list of non-batch axes")
    call.emit(Reduce(mode=_REDUCE[call.ctx.layer.class_name], axes=tuple(a % rank for a in axes),  # type: ignore
                     keepdims=keepdims), x)


@register_operation("Matmul", "MatMul", constraints="two operands of rank >= 2 (tensors, or one constant matrix); "
                    "NumPy semantics")
def _matmul(call: OpCall) -> None:
    if len(call.args) != 2:
        call.refuse(f"takes two operands, got {len(call.args)}", field="args")
    x, y = call.operand(call.args[0]), call.operand(call.args[1])
    call.emit(MatMul(), x, y)


@register_operation("Reshape", constraints="newshape keeps the batch axis first (-1 or None there, static sizes "
                    "after it)")
def _reshape(call: OpCall) -> None:
    x = _one_tensor(call)
    shape = call.ctx.cfg("newshape")
    ok = isinstance(shape, list) and len(shape) >= 1 and shape[0] in (-1, None) and all(
        is_int(d) and (d > 0 or d == -1) for d in shape[1:]) and -1 not in shape[1:]
    if not ok:
        call.refuse(f"unsupported newshape {shape!r}", field="newshape", value=shape,
                    supported="[-1 or None, static positive sizes...] (the batch axis stays first)")
    call.emit(Reshape(shape=tuple(int(d) for d in shape[1:])), x)


@register_operation("Transpose", constraints="axes keeping the batch axis first")
def _transpose(call: OpCall) -> None:
    x = _one_tensor(call)
    rank = call.type_of(x).rank
    axes = call.ctx.cfg("axes")
    if not (isinstance(axes, list) and sorted(a % rank for a in axes if is_int(a)) == list(range(rank))
            and axes[0] % rank == 0):
        call.refuse(f"unsupported axes {axes!r}", field="axes", value=axes,
                    supported="a permutation of the axes with the batch axis 0 first")
    call.emit(Transpose(perm=tuple(int(a) % rank for a in axes)), x)


@register_operation("ExpandDims", constraints="axis (an int, or a list) after the batch axis")
def _expand_dims(call: OpCall) -> None:
    x = _one_tensor(call)
    value = call.ctx.cfg("axis")
    axes = [value] if is_int(value) else value
    out_rank = call.type_of(x).rank + (len(axes) if isinstance(axes, list) else 0)
    if not (isinstance(axes, list) and axes and all(is_int(a) and -out_rank <= a < out_rank and a % out_rank
                                                    for a in axes)):
        call.refuse(f"unsupported axis {value!r}", field="axis", value=value, supported="axes after the batch axis")
    for i, a in enumerate(sorted(int(a) % out_rank for a in axes)):
        x = call.emit(ExpandDims(axis=a), x, last=i == len(axes) - 1)


@register_operation("Squeeze", constraints="axis (an int, a list, or None: every static size-1 axis but the batch)")
def _squeeze(call: OpCall) -> None:
    x = _one_tensor(call)
    shape = call.type_of(x).shape
    value = call.ctx.cfg("axis")
    rank = len(shape)
    if value is None:
        axes = [i for i in range(1, rank) if shape[i] == 1]
    else:
        axes = [value] if is_int(value) else value
        if not (isinstance(axes, list) and all(is_int(a) and -rank <= a < rank and a % rank and shape[a % rank] == 1
                                               for a in axes)):
            call.refuse(f"unsupported axis {value!r} for input {list(shape)}", field="axis", value=value,
                        supported="size-1 axes after the batch axis")
    if not axes:
        return
    for i, a in enumerate(sorted((int(a) % rank for a in axes), reverse=True)):
        x = call.emit(Squeeze(axis=a), x, last=i == len(axes) - 1)


def _tensor_list(call: OpCall) -> list[str]:
    values = call.arg(0, "xs")
    if not (isinstance(values, list) and values and all(isinstance(v, Tensor) for v in values)):
        call.refuse(f"takes a list of tensors, got {values!r}", field="args")
    return [v.name for v in values]


@register_operation("Concatenate", constraints="a list of tensors, any non-batch axis")
def _concatenate(call: OpCall) -> None:
    xs = _tensor_list(call)
    call.emit(Concat(axis=_axis(call, "axis", call.type_of(xs[0]).rank)), *xs)


@register_operation("Stack", constraints="a list of tensors, any non-batch axis of the result")
def _stack(call: OpCall) -> None:
    xs = _tensor_list(call)
    rank = call.type_of(xs[0]).rank + 1
    axis = _axis(call, "axis", rank)
    expanded = [call.emit(ExpandDims(axis=axis), x, last=False) for x in xs]
    call.emit(Concat(axis=axis), *expanded)


@register_operation("Cast", constraints="to a float dtype: no node (values stay in the model's float dtype)")
def _cast(call: OpCall) -> None:
    x = _one_tensor(call)
    dtype = call.ctx.cfg("dtype")
    if dtype not in ("float16", "bfloat16", "float32", "float64"):
        call.refuse(f"unsupported cast to {dtype!r}", field="dtype", value=dtype, supported="a float dtype")
    call.ctx.x, call.ctx.x_type = x, call.type_of(x)


def _slice_entry(entry: Any) -> tuple[str, Any]:
    if isinstance(entry, dict) and entry.get("class_name") == "__slice__" and isinstance(entry.get("config"), dict):
        c = entry["config"]
        return "slice", (c.get("start"), c.get("stop"), c.get("step"))
    if is_int(entry):
        return "index", int(entry)
    return "other", entry


@register_operation("GetItem", constraints="static slices (positive steps) and integer indices; the batch axis "
                    "whole")
def _get_item(call: OpCall) -> None:
    x = call.tensor(0)
    key = call.arg(1, "key")
    shape = call.type_of(x).shape
    entries = key if isinstance(key, list) else [key]
    if len(entries) > len(shape):
        call.refuse(f"index {key!r} has more entries than the input has axes {list(shape)}", field="args")
    starts, stops, steps, squeeze = [], [], [], []
    for axis, dim in enumerate(shape):
        kind, value = _slice_entry(entries[axis]) if axis < len(entries) else ("slice", (None, None, None))
        if kind == "other" or (kind == "slice" and not all(v is None or is_int(v) for v in value)):
            call.refuse(f"unsupported index {entries[axis]!r} on axis {axis}", field="args", value=entries[axis],
                        supported="static slices and integers")
        if axis == 0:
            if kind != "slice" or value not in ((None, None, None), (0, None, None), (None, None, 1)):
                call.refuse(f"indexes the batch axis ({entries[0]!r})", field="args", value=entries[0],
                            supported="the batch axis whole (`:`)")
            continue
        if not isinstance(dim, int):
            call.refuse(f"slices axis {axis} of unknown size", field="args")
        if kind == "index":
            i = value + dim if value < 0 else value
            if not 0 <= i < dim:
                call.refuse(f"index {value} is out of range for axis {axis} of size {dim}", field="args")
            lo, hi, st = i, i + 1, 1
            squeeze.append(axis)
        else:
            start, stop, step = value
            st = 1 if step is None else step
            if st < 1:
                call.refuse(f"slice step {step} on axis {axis}", field="args", value=step, supported="positive steps")
            lo, hi, _ = slice(start, stop, st).indices(dim)
            hi = max(hi, lo)
        starts.append(lo)
        stops.append(hi)
        steps.append(st)
    out = call.emit(Slice(starts=tuple(starts), stops=tuple(stops), steps=tuple(steps)), x, last=not squeeze)
    for i, axis in enumerate(sorted(squeeze, reverse=True)):
        out = call.emit(Squeeze(axis=axis), out, last=i == len(squeeze) - 1)

