"""The converter table: one entry per Keras layer class, user-extensible.

A converter receives a ``LayerContext`` (the layer's spec, the current value
and its type, a builder to emit IR nodes and constants) and returns the name
of the value the layer produces. It reads config fields through the context,
which records every field it consumed; a field nobody consumed is refused by
name, so a config value is always either honoured or refused, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from keydnn.errors import Problem
from keydnn.frontends.keras.spec import LayerSpec
from keydnn.frontends.keras.values import is_one_of
from keydnn.ir.graph import Node
from keydnn.ir.ops import OpBase, ShapeError
from keydnn.ir.types import TensorType, Value

__all__ = [
    "ConversionOptions", "LayerContext", "ConverterEntry", "CONVERTERS", "register_converter",
    "TRAINING_ONLY_FIELDS", "Unconvertible",
]

#: Config fields that only matter for training (or naming); safe to ignore at inference.
TRAINING_ONLY_FIELDS: frozenset[str] = frozenset({
    "name", "trainable", "kernel_initializer", "bias_initializer", "kernel_regularizer",
    "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint",
    "depthwise_initializer", "depthwise_regularizer", "depthwise_constraint",
    "pointwise_initializer", "pointwise_regularizer", "pointwise_constraint",
    "gamma_initializer", "beta_initializer", "moving_mean_initializer",
    "moving_variance_initializer", "gamma_regularizer", "beta_regularizer",
    "gamma_constraint", "beta_constraint", "alpha_initializer", "alpha_regularizer",
    "alpha_constraint", "seed", "batch_input_shape", "batch_shape", "input_dim", "input_shape",
    "synchronized", "renorm", "renorm_clipping", "renorm_momentum", "momentum",
})


@dataclass(frozen=True)
class ConversionOptions:
    """User choices that affect how layers lower."""

    dtype: str = "float32"
    allow_non_linear_activation: bool = False
    strict: bool = True
    keras_major: int = 3


class Unconvertible(Exception):
    """Raised inside a converter to stop converting this layer (problems are already recorded)."""


@dataclass
class LayerContext:
    """What a converter sees and uses: the layer, the current value, a node builder."""

    layer: LayerSpec
    x: str
    x_type: TensorType | None
    options: ConversionOptions
    problems: list[Problem]
    nodes: list[Node]
    weights: dict[str, np.ndarray]
    _used: set[str] = field(default_factory=set)
    _input_unknown: bool = False
    #: The config field read last: what the driver names when a converter fails unexpectedly.
    last_field: str | None = None

    # -- config -----------------------------------------------------------------
    def cfg(self, key: str, default: Any = None) -> Any:
        """Read a config field, marking it honoured."""
        self._used.add(key)
        self.last_field = key
        return self.layer.config.get(key, default)

    def ignore(self, *keys: str) -> None:
        """Mark fields that do not affect inference as handled."""
        self._used.update(keys)

    def unconsumed(self) -> list[str]:
        """Config fields no one read. Empty when the converter stopped early for want of the input
        type: the fields it never reached are unchecked, not unknown."""
        if self._input_unknown:
            return []
        return sorted(k for k in self.layer.config if k not in self._used and k not in TRAINING_ONLY_FIELDS)

    # -- problems ---------------------------------------------------------------
    def refuse(self, message: str, *, field: str | None = None, value: Any = None, supported: str | None = None) -> None:
        """Record a problem with this layer (conversion of the model continues to collect all)."""
        self.problems.append(Problem(
            message=message, layer_index=self.layer.index, layer_name=self.layer.name,
            layer_class=self.layer.class_name, field=field, value=value, supported=supported,
        ))

    def require(self, ok: bool, message: str, *, field: str | None = None, value: Any = None,
                supported: str | None = None) -> None:
        if not ok:
            self.refuse(message, field=field, value=value, supported=supported)

    def check_in(self, key: str, allowed: Iterable[Any], default: Any = None, *, supported: str | None = None) -> Any:
        """Read a field that must take one of ``allowed`` values (compared by type and value).

        Always returns one of ``allowed``: a value that is not (a list, a dict, ``1`` for ``True``) is
        recorded as a problem and ``default`` (or the first allowed value) is returned, so that the
        converter can go on reading its other fields -- and report their problems too -- without
        computing with a value of the wrong type.
        """
        value = self.cfg(key, default)
        allowed = list(allowed)
        if is_one_of(value, allowed):
            return value
        self.refuse(f"unsupported {key} {value!r}", field=key, value=value,
                    supported=supported or ", ".join(repr(a) for a in allowed))
        return default if is_one_of(default, allowed) else allowed[0]

    # -- weights ----------------------------------------------------------------
    def weight(self, name: str) -> np.ndarray:
        for wname, arr in self.layer.weights:
            if wname == name:
                return np.asarray(arr)
        have = [w for w, _ in self.layer.weights]
        self.refuse(f"missing weight {name!r} (layer has {have})")
        raise Unconvertible

    def add_constant(self, suffix: str, array: np.ndarray) -> str:
        name = f"{self.layer.name}.{suffix}"
        self.weights[name] = np.ascontiguousarray(array, dtype=self.options.dtype)
        return name

    # -- emitting ---------------------------------------------------------------
    def need_type(self) -> TensorType:
        """The input type; a layer after an unconvertible one cannot know it."""
        if self.x_type is None:
            self._input_unknown = True
            raise Unconvertible
        return self.x_type

    def _node_name(self, suffix: str | None) -> str:
        """The name of the next node this layer emits (graph contexts also keep names unique)."""
        return self.layer.name if suffix is None else f"{self.layer.name}.{suffix}"

    def _emitted(self, name: str, out_type: TensorType | None) -> None:
        """Bookkeeping after a node is appended (graph contexts record names and types)."""

    def emit(self, op: OpBase, *operands: str, suffix: str | None = None) -> str:
        """Append a node applying ``op`` to the current value (plus ``operands``); returns its output."""
        name = self._node_name(suffix)
        inputs = (self.x,) + operands
        types = [self.type_of(i) for i in inputs]
        out_type: TensorType | None = None
        if all(t is not None for t in types):
            try:
                out_type = op.infer(types)  # type: ignore[arg-type]
            except ShapeError as exc:
                self.refuse(f"invalid shapes for {op.kind}: {exc}")
                raise Unconvertible from exc
        self.nodes.append(Node(name=name, op=op, inputs=inputs, outputs=(Value(name=name, type=out_type),),
                               source=self.layer.name))
        self._emitted(name, out_type)
        self.x, self.x_type = name, out_type
        return name

    def type_of(self, name: str) -> TensorType | None:
        """The IR type of value ``name`` as far as conversion knows it (None when unknown yet)."""
        if name == self.x:
            return self.x_type
        if name in self.weights:
            arr = self.weights[name]
            return TensorType(shape=arr.shape, dtype=str(arr.dtype))
        for node in reversed(self.nodes):
            if node.outputs[0].name == name:
                return node.outputs[0].type
        return None


Converter = Callable[[LayerContext], None]


@dataclass(frozen=True)
class ConverterEntry:
    """A converter and the human description of what it supports (used in docs)."""

    class_name: str
    fn: Converter
    constraints: str


CONVERTERS: dict[str, ConverterEntry] = {}


def register_converter(class_name: str, *, constraints: str = "", replace: bool = False) -> Callable[[Converter], Converter]:
    """Decorator: convert Keras layers of ``class_name`` with this function."""

    def deco(fn: Converter) -> Converter:
        if class_name in CONVERTERS and not replace:
            raise ValueError(f"a converter for {class_name!r} is already registered; pass replace=True")
        CONVERTERS[class_name] = ConverterEntry(class_name, fn, constraints)
        return fn

    return deco
