"""What the two step-by-step executors (numba-cpu's per-op mode, numba-cuda) say about a graph alike.

Both number the slots the same way (graph inputs, then constants, then node results), name a node the same
way in their errors and print a plan the same way, so that a user comparing the two sees the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from keydnn.ir.graph import Graph, Node

__all__ = ["Step", "Plan", "slot_names", "node_where", "opaque_problem", "format_steps"]


@dataclass(frozen=True)
class Step:
    """One node: its bound kernel (the backend's ``LoweredOp``), the slots it reads, the slot it defines."""

    node: str
    kind: str
    op: Any
    operands: tuple[int, ...]
    output: int
    dtype: Optional[np.dtype] = None  # the result's dtype, where the backend plans host memory by it


@dataclass(frozen=True)
class Plan:
    """Slots are numbered: graph inputs first, then constants, then node outputs in order."""

    graph: Graph
    steps: tuple[Step, ...]
    slot_names: tuple[str, ...]
    input_slots: tuple[int, ...]
    output_slots: tuple[int, ...]
    template: tuple[Optional[Any], ...]  # constants (host or device arrays) prefilled, None elsewhere

    def __str__(self) -> str:
        return format_steps(self.steps, self.slot_names)


def slot_names(graph: Graph) -> list[str]:
    """Slot names in slot order: graph inputs first, then constants, then node results."""
    names = [v.name for v in graph.inputs] + [c.name for c in graph.constants]
    return names + [n.outputs[0].name for n in graph.nodes]


def node_where(node: Node) -> str:
    """How an error names a node: its name, kind and Keras layer."""
    return f"node {node.name!r} ({node.op.kind})" + (f" from Keras layer {node.source!r}" if node.source else "")


def opaque_problem(node: Node) -> str:
    """Why a placeholder node (an unsupported Keras layer) cannot run."""
    return (f"{node_where(node)} is a placeholder for the unsupported Keras layer "
            f"{node.op.keras_class} ({node.op.reason}) and cannot run")


def format_steps(steps: Sequence[Step], names: Sequence[str]) -> str:
    """One line per step: ``%result = description(%operands)  // node``."""
    lines = []
    for s in steps:
        args = ", ".join(f"%{names[i]}" for i in s.operands)
        lines.append(f"%{names[s.output]} = {s.op.description}({args})  // {s.node}")
    return "\n".join(lines)
