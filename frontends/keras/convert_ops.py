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
    OpBase,
)

__all__ = ["OPERATIONS", "OpCall", "convert_operation", "register_operation", "operation_docs", "one_tensor",
           "number_arg", "axis_arg", "tensor_list"]


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
        return self.ctx.type_of(name)

    # -- emitting -------------------------------------------------------------------------
    def emit(self, op: OpBase, *inputs: str, last: bool = True) -> str:
        """A node applying ``op`` to ``inputs``; ``last=False`` for intermediate nodes (suffixed names)."""
        ctx = self.ctx
        ctx.x, ctx.x_type = inputs[0], ctx.type_of(inputs[0])
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
    if any(ctx.type_of(i) is None for i in inputs):
        ctx._input_unknown = True
        raise Unconvertible
    entry.fn(OpCall(ctx, raw_call, inputs))


def operation_docs() -> list[dict[str, str]]:
    """One row per supported operation class (for ``keydnn layers``)."""
    return [{"operation": name, "constraints": OPERATIONS[name].constraints} for name in sorted(OPERATIONS)]


# -- argument helpers shared by the converters of convert_ops_elementwise and convert_ops_tensor --


def one_tensor(call: OpCall) -> str:
    if len(call.args) != 1 or not isinstance(call.args[0], Tensor):
        call.refuse(f"takes one tensor argument, got {call.args!r}", field="args")
    return call.args[0].name


def number_arg(call: OpCall, key: str, default: Any) -> float:
    value = call.ctx.cfg(key, default)
    if not is_number(value):
        call.refuse(f"unsupported {key} {value!r}", field=key, value=value, supported="a finite number")
    return float(value)


def axis_arg(call: OpCall, key: str, rank: int, *, allow_none: bool = False) -> int | None:
    value = call.ctx.cfg(key, -1)
    if value is None and allow_none:
        return None
    if not (is_int(value) and -rank <= value < rank and value % rank != 0):
        call.refuse(f"unsupported {key} {value!r}", field=key, value=value,
                    supported=f"one non-batch axis in -{rank - 1}..{rank - 1}")
    return int(value) % rank


def tensor_list(call: OpCall) -> list[str]:
    values = call.arg(0, "xs")
    if not (isinstance(values, list) and values and all(isinstance(v, Tensor) for v in values)):
        call.refuse(f"takes a list of tensors, got {values!r}", field="args")
    return [v.name for v in values]


# the converters register themselves in OPERATIONS
from keydnn.frontends.keras import convert_ops_elementwise, convert_ops_tensor  # noqa: E402,F401
