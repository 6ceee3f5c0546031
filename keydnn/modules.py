"""Inspectable modules: a read-only view of each IR node, in execution order.

``Sequential.layers`` lists these so a user can look at what the converted
model does (kernel sizes, strides, weights) in familiar terms. Each module can
also run on its own through the reference interpreter, for debugging.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keydnn.ir.graph import Graph, Node
from keydnn.ir.reference import REFERENCE_KERNELS

__all__ = ["Module", "MODULE_CLASSES", "module_for"]


class Module:
    """One node of a model, with its attributes and weights by name."""

    def __init__(self, node: Node, graph: Graph) -> None:
        self.node = node
        self._graph = graph

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def keras_name(self) -> str | None:
        return self.node.source

    @property
    def op(self) -> Any:
        return self.node.op

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """Constant operands by operand name (e.g. ``weight``, ``bias``)."""
        out: dict[str, np.ndarray] = {}
        for operand, value in zip(self.op.operands, self.node.inputs):
            if value in self._graph.weights:
                out[operand.rstrip("?")] = self._graph.weights[value]
        return out

    @property
    def weight(self) -> np.ndarray | None:
        return self.weights.get("weight")

    @property
    def bias(self) -> np.ndarray | None:
        return self.weights.get("bias")

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_") or item == "node":
            raise AttributeError(item)
        attrs = self.node.op.attrs()
        if item in attrs:
            return getattr(self.node.op, item)
        raise AttributeError(f"{type(self).__name__} has no attribute {item!r}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run this node alone with the reference kernel (slow; for debugging)."""
        args = [x] + [self._graph.weights[v] for v in self.node.inputs[1:]]
        return np.asarray(REFERENCE_KERNELS[self.op.kind](self.op, args)).astype(x.dtype)

    def __repr__(self) -> str:
        from keydnn.ir.printer import format_attrs

        typ = self.node.outputs[0].type
        attrs = format_attrs(self.op.attrs())
        return f"{type(self).__name__}({self.name!r}{' ' + attrs if attrs else ''}) -> {typ}"


def _module_class(class_name: str) -> type[Module]:
    return type(class_name, (Module,), {"__doc__": f"A {class_name} node of a converted model."})


#: op kind -> module class (Conv2d, MaxPool2d, ...).
MODULE_CLASSES: dict[str, type[Module]] = {
    "conv2d": _module_class("Conv2d"),
    "max_pool2d": _module_class("MaxPool2d"),
    "avg_pool2d": _module_class("AvgPool2d"),
    "global_avg_pool2d": _module_class("GlobalAvgPool2d"),
    "flatten": _module_class("Flatten"),
    "dense": _module_class("Dense"),
    "relu": _module_class("ReLU"),
    "softmax": _module_class("Softmax"),
    "activation": _module_class("Activation"),
    "transpose": _module_class("Transpose"),
    "reshape": _module_class("Reshape"),
    "opaque": _module_class("Unsupported"),
}


def module_for(node: Node, graph: Graph) -> Module:
    cls = MODULE_CLASSES.get(node.op.kind)
    if cls is None:
        name = "".join(part.capitalize() for part in node.op.kind.split("_"))
        cls = MODULE_CLASSES.setdefault(node.op.kind, _module_class(name))
    return cls(node, graph)

Conv2d = MODULE_CLASSES["conv2d"]
MaxPool2d = MODULE_CLASSES["max_pool2d"]
AvgPool2d = MODULE_CLASSES["avg_pool2d"]
GlobalAvgPool2d = MODULE_CLASSES["global_avg_pool2d"]
Flatten = MODULE_CLASSES["flatten"]
Dense = MODULE_CLASSES["dense"]
ReLU = MODULE_CLASSES["relu"]
Softmax = MODULE_CLASSES["softmax"]
Activation = MODULE_CLASSES["activation"]
Transpose = MODULE_CLASSES["transpose"]
Reshape = MODULE_CLASSES["reshape"]
Unsupported = MODULE_CLASSES["opaque"]
__all__ += ["Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Flatten", "Dense", "ReLU", "Softmax",
            "Activation", "Transpose", "Reshape", "Unsupported"]


class MergeModule(Module):
    """A node that combines several activations (add, concat, ...): called with one array per operand."""

    def __call__(self, *xs: np.ndarray) -> np.ndarray:  # type: ignore[override]
        """Run this node alone on its operands with the reference kernel (slow; for debugging)."""
        if len(xs) != len(self.node.inputs):
            raise ValueError(f"{self.name} ({self.op.kind}) takes {len(self.node.inputs)} arrays, got {len(xs)}")
        return np.asarray(REFERENCE_KERNELS[self.op.kind](self.op, list(xs))).astype(xs[0].dtype)


def _merge_class(class_name: str) -> type[MergeModule]:
    return type(class_name, (MergeModule,), {"__doc__": f"A {class_name} node of a converted model."})


MODULE_CLASSES.update({
    "add": _merge_class("Add"),
    "sub": _merge_class("Subtract"),
    "mul": _merge_class("Multiply"),
    "avg": _merge_class("Average"),
    "max": _merge_class("Maximum"),
    "min": _merge_class("Minimum"),
    "concat": _merge_class("Concatenate"),
})
Add = MODULE_CLASSES["add"]
Subtract = MODULE_CLASSES["sub"]
Multiply = MODULE_CLASSES["mul"]
Average = MODULE_CLASSES["avg"]
Maximum = MODULE_CLASSES["max"]
Minimum = MODULE_CLASSES["min"]
Concatenate = MODULE_CLASSES["concat"]
__all__ += ["MergeModule", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"]
