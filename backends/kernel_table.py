"""What every backend's per-op kernels share: the op-kind -> lowering table, the channels-first check, and the
concrete shape of every node for one set of input shapes.

Backend-neutral (no numba, no CUDA), so that ``numba_cpu`` and ``numba_cuda`` take these from here rather
than from each other.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from keydnn.errors import BackendError
from keydnn.ir.graph import Graph
from keydnn.ir.types import TensorType

__all__ = ["KernelTable", "require_channels_first", "resolve_shapes"]

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
