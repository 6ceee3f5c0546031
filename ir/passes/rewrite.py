"""Small shared tools for passes that rewrite node lists: renaming, fresh names, rebuilding.

Every rewriting pass ends the same way: rename uses of removed values, drop the
nodes and constants that its own rewrite made dead (never ones that were dead
before: that is ``eliminate-dead-code``'s job), rebuild the frozen graph, and
report ``changed`` by comparing with the input. Keeping that here keeps each
pass file about its rewrite only.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from keydnn.ir.graph import Graph, Node
from keydnn.ir.passes.base import PassResult

__all__ = ["rename_uses", "fresh_name", "used_names", "use_counts", "rebuild", "finish"]


def rename_uses(nodes: Iterable[Node], rename: Mapping[str, str]) -> list[Node]:
    """Nodes with every operand ``a`` replaced by ``rename[a]`` (chains resolved)."""

    def resolve(name: str) -> str:
        seen = set()
        while name in rename and name not in seen:
            seen.add(name)
            name = rename[name]
        return name

    out = []
    for node in nodes:
        if any(i in rename for i in node.inputs):
            node = node.model_copy(update={"inputs": tuple(resolve(i) for i in node.inputs)})
        out.append(node)
    return out


def used_names(graph: Graph) -> set[str]:
    """Every value, constant and node name in ``graph`` (what a new name must avoid)."""
    names = {v.name for v in graph.inputs} | {c.name for c in graph.constants}
    for node in graph.nodes:
        names.add(node.name)
        names.update(o.name for o in node.outputs)
    return names


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first not in ``taken`` (which it joins)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def use_counts(nodes: Iterable[Node], outputs: Iterable[str]) -> dict[str, int]:
    """How many times each value is used, a graph output counting as one use."""
    counts: dict[str, int] = {}
    for node in nodes:
        for i in node.inputs:
            counts[i] = counts.get(i, 0) + 1
    for o in outputs:
        counts[o] = counts.get(o, 0) + 1
    return counts


def rebuild(
    graph: Graph,
    nodes: Iterable[Node],
    *,
    outputs: Iterable[str] | None = None,
    inputs: tuple | None = None,
    new_weights: Mapping[str, np.ndarray] | None = None,
) -> Graph:
    """The rewritten graph; nodes and constants made dead by the rewrite are dropped."""
    outs = tuple(graph.outputs if outputs is None else outputs)
    nodes = list(nodes)
    was_used = set(graph.outputs)
    for node in graph.nodes:
        was_used.update(node.inputs)
    # Drop nodes whose results the rewrite left unused (iterate: chains die together).
    while True:
        live = set(outs)
        for node in nodes:
            live.update(node.inputs)
        dead = [n for n in nodes if not any(o.name in live for o in n.outputs)
                and any(o.name in was_used for o in n.outputs)]
        if not dead:
            break
        nodes = [n for n in nodes if n not in dead]
    live = set(outs)
    for node in nodes:
        live.update(node.inputs)
    drop = tuple(c.name for c in graph.constants if c.name in was_used and c.name not in live)
    weights = graph.weights.with_arrays(dict(new_weights or {}), drop=drop)
    new_consts = set(new_weights or {})
    weights = weights.with_arrays({}, drop=tuple(k for k in new_consts if k not in live))
    changes: dict = {"nodes": tuple(nodes), "outputs": outs}
    if inputs is not None:
        changes["inputs"] = tuple(inputs)
    if drop or new_weights:
        changes["weights"] = weights
    return graph.replace(**changes)


def finish(graph: Graph, new: Graph) -> PassResult:
    """``PassResult`` that returns the input object itself when nothing changed."""
    if new == graph:
        return PassResult(graph, False)
    return PassResult(new, True)
