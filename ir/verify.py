"""Graph-wide invariants, checked after every pass.

Per-op attribute checks live in the op classes (pydantic validators); this
module checks what only the whole graph can: SSA form (each value defined
once, before use), operand counts, constants where weights are expected, and
— where types are present — that every type agrees with the op's shape rule.
"""

from __future__ import annotations

from keydnn.errors import IRError
from keydnn.ir.graph import Graph
from keydnn.ir.ops import ShapeError
from keydnn.ir.types import TensorType

__all__ = ["verify", "collect_problems"]


def collect_problems(graph: Graph, *, require_types: bool = False) -> list[str]:
    """Every invariant violation of ``graph``, as readable lines (empty when valid)."""
    problems: list[str] = []
    const_names = {c.name for c in graph.constants}
    defined: dict[str, TensorType | None] = {}

    def define(name: str, typ: TensorType | None, where: str) -> None:
        if name in defined:
            problems.append(f"{where}: value %{name} is defined more than once")
        defined[name] = typ

    if set(graph.weights) != const_names:
        problems.append(
            f"constants {sorted(const_names)} do not match attached weights {sorted(graph.weights)}"
        )
    for v in graph.inputs:
        define(v.name, v.type, "graph input")
        if v.type is None:
            problems.append(f"graph input %{v.name} has no type")
    for c in graph.constants:
        define(c.name, c.type, "constant")

    names_seen: set[str] = set()
    for node in graph.nodes:
        where = f"node {node.name} ({node.op.kind})"
        if node.name in names_seen:
            problems.append(f"{where}: node name is not unique")
        names_seen.add(node.name)
        lo, hi = node.op.arity()
        if len(node.inputs) < lo or (hi is not None and len(node.inputs) > hi):
            takes = f"{lo}..{hi}" if hi is not None else f"at least {lo}"
            problems.append(f"{where}: takes {takes} operands, has {len(node.inputs)}")
        if len(node.outputs) != 1:
            problems.append(f"{where}: must have exactly one output, has {len(node.outputs)}")
        in_types: list[TensorType | None] = []
        for pos, name in enumerate(node.inputs):
            if name not in defined:
                problems.append(f"{where}: operand %{name} is used before it is defined")
                in_types.append(None)
                continue
            in_types.append(defined[name])
            operand = node.op.operand_name(pos)
            is_const = name in const_names
            if operand in node.op.constant_operands and not is_const:
                problems.append(f"{where}: operand {operand} (%{name}) must be a constant")
            if operand not in node.op.constant_operands and is_const and operand not in getattr(
                    node.op, "may_be_constant", ()):
                problems.append(f"{where}: operand {operand} (%{name}) must not be a constant")
        out_type = node.outputs[0].type if node.outputs else None
        if require_types and out_type is None and node.op.kind != "opaque":
            if all(t is not None for t in in_types):
                problems.append(f"{where}: output has no type")
        if out_type is not None and all(t is not None for t in in_types):
            try:
                expected = node.op.infer(in_types)  # type: ignore[arg-type]
            except ShapeError as exc:
                problems.append(f"{where}: {exc}")
            else:
                if expected.shape != out_type.shape or expected.dtype != out_type.dtype:
                    problems.append(f"{where}: output type {out_type} disagrees with shape rule {expected}")
        for out in node.outputs:
            define(out.name, out.type, where)

    for name in graph.outputs:
        if name not in defined:
            problems.append(f"graph output %{name} is not defined")
    return problems


def verify(graph: Graph, *, require_types: bool = False) -> None:
    """Raise IRError listing every violation; return quietly for a valid graph."""
    problems = collect_problems(graph, require_types=require_types)
    if problems:
        raise IRError(f"graph {graph.name!r} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))
