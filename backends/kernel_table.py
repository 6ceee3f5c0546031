"""What every backend's per-op kernels share: the op-kind -> lowering table, the channels-first check, and the
concrete shape of every node for one set of input shapes.

Backend-neutral (no numba, no CUDA), so that ``numba_cpu`` and ``numba_cuda`` take these from here rather
than from each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Generic, Mapping, Optional, TypeVar

import numpy as np

from keydnn.errors import BackendError
from keydnn.ir.graph import Graph, Node
from keydnn.ir.types import TensorType

__all__ = ["KernelTable", "NodeContext", "require_channels_first", "resolve_shapes"]

L = TypeVar("L", bound=Callable)


class KernelTable(dict, Generic[L]):
    """op kind -> lowering, filled by a backend's kernel modules through ``register``."""

    def register(self, *kinds: str) -> Callable[[L], L]:
        """Decorator: register a lowering for one or more op kinds."""

        def register(fn: L) -> L:
            for kind in kinds:
                self[kind] = fn
            return fn

        return register


@dataclass(frozen=True)
class NodeContext:
    """What a lowering may read: the node, its operand and result types, and the weights. Each backend
    subclasses it (adding what binding a kernel there needs) and names its own refusal error."""

    node: Node
    in_types: tuple[TensorType, ...]
    out_type: TensorType
    weights: Mapping[str, np.ndarray]

    #: The backend's "cannot lower this node" error.
    refusal: ClassVar[type[BackendError]] = BackendError

    @property
    def dtype(self) -> np.dtype:
        return self.out_type.np_dtype

    def constant(self, position: int) -> Optional[np.ndarray]:
        """Operand ``position`` as a private, writable, C-contiguous array in the result dtype, or None if the
        op omits it. A private copy keeps kernel argument types uniform (numba types read-only arrays
        separately, which would mean another compile) and isolates the executable from whoever else holds
        the weights."""
        if position >= len(self.node.inputs):
            return None
        name = self.node.inputs[position]
        if name not in self.weights:
            raise self.refusal(f"operand {position} (%{name}) must be a constant weight")
        return np.array(self.weights[name], dtype=self.dtype, order="C", copy=True)


def require_channels_first(op: object, unsupported: type[BackendError], backend: str) -> None:
    """Kernels are channels-first only; layout is canonicalized by a pass, not by a kernel."""
    layout = getattr(op, "layout", "NCHW")
    if layout != "NCHW":
        raise unsupported(f"{op.kind} with layout {layout} is not supported by {backend} "  # type: ignore[attr-defined]
                          "(kernels are NCHW); run the canonicalize-layout pass first")


def resolve_shapes(graph: Graph, input_shapes: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
    """Concrete result shape of every node, from the ops' own shape rules (no second copy of them)."""
    types: dict[str, TensorType] = {c.name: c.type for c in graph.constants}
    for value, shape in zip(graph.inputs, input_shapes):
        if not value.type.matches(shape):
            raise ValueError(f"input %{value.name} has shape {shape}, graph expects {value.type}")
        types[value.name] = value.type.with_shape(shape)
    shapes: list[tuple[int, ...]] = []
    for node in graph.nodes:
        out = node.op.infer([types[i] for i in node.inputs])
        if not all(isinstance(d, int) for d in out.shape):
            raise ValueError(f"node {node.name}: shape {out} is not concrete for inputs {input_shapes}")
        types[node.outputs[0].name] = out
        shapes.append(tuple(out.shape))  # type: ignore[arg-type]
    return shapes
