"""eliminate-identity and eliminate-dead-code: remove nodes that compute nothing."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import OpBase
from keydnn.ir.passes.base import Pass, PassResult, register_pass
from keydnn.ir.passes.rewrite import finish, rebuild

__all__ = ["EliminateIdentity", "EliminateDeadCode", "is_identity"]


def is_identity(node: Node, in_shape: tuple | None, weights: Mapping[str, np.ndarray] | None = None) -> bool:
    """Whether ``node`` returns its first operand unchanged (values and shape).

    Ops whose identity-ness depends on constant operands (scale_shift with
    scale 1 and shift 0, prelu with alpha 1) are recognized only when
    ``weights`` is given.
    """
    op = node.op
    rule = _IDENTITY_RULES.get(op.kind)
    if rule is not None and rule(op):
        return True
    if op.kind in ("reshape", "flatten") and in_shape is not None:
        out = node.outputs[0].type
        return out is not None and tuple(out.shape) == tuple(in_shape)
    if weights is not None and op.kind in _CONSTANT_IDENTITIES:
        try:
            params = [weights[name] for name in node.inputs[1:]]
        except KeyError:
            return False
        return all(np.all(p == v) for p, v in zip(params, _CONSTANT_IDENTITIES[op.kind]))
    return False


#: op kind -> predicate on the op's attributes alone.
_IDENTITY_RULES: dict[str, Callable[[OpBase], bool]] = {
    "activation": lambda op: op.function == "linear",  # type: ignore[attr-defined]
    "transpose": lambda op: tuple(op.perm) == tuple(range(len(op.perm))),  # type: ignore[attr-defined]
    "pad2d": lambda op: not any(op.pads),  # type: ignore[attr-defined]
    "crop2d": lambda op: not any(op.crops),  # type: ignore[attr-defined]
    "upsample2d": lambda op: tuple(op.factors) == (1, 1),  # type: ignore[attr-defined]
}
#: op kind -> the value every constant operand (after x) must hold for the op to be an identity.
_CONSTANT_IDENTITIES: dict[str, tuple[float, ...]] = {"scale_shift": (1.0, 0.0), "prelu": (1.0,)}


@register_pass
class EliminateIdentity(Pass):
    """Guarantees: no identity remains: linear activation, identity transpose, shape-preserving
    reshape/flatten, pad2d/crop2d of zeros, upsample2d by (1, 1), scale_shift with
    scale 1 and shift 0, prelu with alpha 1, and a fold_time of an unfold_time (time folded
    back into the batch right after it was taken out: two TimeDistributed layers in a row,
    whose inner layers then meet, so the layout pass needs no transposes between them).

    Uses of a removed node's output are renamed to its operand. An identity
    that maps a graph input straight to a graph output is kept, so the graph's
    interface never changes.
    """

    name = "eliminate-identity"

    def run(self, graph: Graph) -> PassResult:
        types = graph.value_types()
        rename: dict[str, str] = {}
        relinked = False
        inputs = {v.name for v in graph.inputs}
        kept: list[Node] = []
        producers: dict[str, Node] = {}
        for node in graph.nodes:
            node = _renamed(node, rename)
            src = node.inputs[0] if node.inputs else None
            folded = _unfolded_rows(node, producers)
            if folded is not None and not (node.outputs[0].name in graph.outputs and folded in inputs):
                rename[node.outputs[0].name] = folded
                continue
            like = _first_sequence(node, producers)
            if like is not None:
                node = node.model_copy(update={"inputs": (node.inputs[0], like)})
                relinked = True
            producers[node.outputs[0].name] = node
            in_type = types.get(src) if src is not None else None
            out = node.outputs[0].name
            if src is not None and is_identity(node, in_type.shape if in_type else None, graph.weights):
                out_type = node.outputs[0].type
                same_layout = out_type is None or in_type is None or out_type.layout == in_type.layout
                if same_layout and not (out in graph.outputs and src in inputs):
                    rename[out] = src
                    continue
            kept.append(node)
        if not rename and not relinked:
            return PassResult(graph, False)
        outputs = tuple(rename.get(o, o) for o in graph.outputs)
        return finish(graph, rebuild(graph, kept, outputs=outputs))


def _unfolded_rows(node: Node, producers: Mapping[str, Node]) -> str | None:
    """The ``(N*T, ...)`` rows that ``node`` (a fold_time of an unfold_time of them) gives back, or None."""
    if node.op.kind != "fold_time":
        return None
    src = producers.get(node.inputs[0])
    if src is None or src.op.kind != "unfold_time":
        return None
    return src.inputs[0]


def _first_sequence(node: Node, producers: Mapping[str, Node]) -> str | None:
    """For an unfold_time whose ``like`` (read for its N and T only) is another unfold_time's result: that
    one's ``like``, so that the unfolded values of TimeDistributed layers whose folds were removed (and the
    transposes feeding them) are left without uses. None otherwise."""
    if node.op.kind != "unfold_time":
        return None
    src = producers.get(node.inputs[1])
    if src is None or src.op.kind != "unfold_time":
        return None
    return src.inputs[1]


def _renamed(node: Node, rename: dict[str, str]) -> Node:
    if not any(i in rename for i in node.inputs):
        return node
    return node.model_copy(update={"inputs": tuple(rename.get(i, i) for i in node.inputs)})


@register_pass
class EliminateDeadCode(Pass):
    """Guarantees: every node and constant contributes to some graph output."""

    name = "eliminate-dead-code"

    def run(self, graph: Graph) -> PassResult:
        live = set(graph.outputs)
        kept: list[Node] = []
        for node in reversed(graph.nodes):
            if any(o.name in live for o in node.outputs):
                kept.append(node)
                live.update(node.inputs)
        kept.reverse()
        dead_consts = tuple(c.name for c in graph.constants if c.name not in live)
        if len(kept) == len(graph.nodes) and not dead_consts:
            return PassResult(graph, False)
        weights = graph.weights.with_arrays({}, drop=dead_consts)
        return PassResult(graph.replace(nodes=tuple(kept), weights=weights), True)
