"""sink-squeeze: move each squeeze below the per-element / per-channel ops that read it.

1-D layers are 2-D ops between ``expand_dims`` and ``squeeze`` (see
``keydnn.ir.ops.shape``). In a Conv1D -> BatchNormalization -> ReLU -> Conv1D
stack the squeeze of one layer and the expand_dims of the next are separated
by the batch_norm and relu, so neither ``fold-batchnorm`` nor
``fuse-activation`` sees conv2d next to them, and ``fold-constants`` cannot
cancel the pair. Those ops commute with removing a size-1 axis, so the squeeze
is sunk below them (their axis or parameters adjusted to the 4-D tensor).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import OpBase, ShapeError
from keydnn.ir.ops.base import normalize_axis
from keydnn.ir.passes.base import Pass, PassResult, register_pass
from keydnn.ir.passes.rewrite import finish, fresh_name, rebuild, rename_uses, use_counts, used_names
from keydnn.ir.types import TensorType, Value

__all__ = ["SinkSqueeze", "SINK_RULES"]


class _State:
    def __init__(self, graph: Graph) -> None:
        self.input_types = {v.name: v.type for v in graph.inputs}
        self.weights: dict[str, np.ndarray] = dict(graph.weights)
        self.new_weights: dict[str, np.ndarray] = {}
        self.taken = used_names(graph)

    def unsqueezed(self, name: str, sample_axis: int, sample_rank: int) -> str:
        """A per-sample parameter with a size-1 axis inserted (scalars are kept)."""
        arr = self.weights[name]
        if arr.ndim != sample_rank or arr.size == 1:
            return name
        new = fresh_name(f"{name}.unsqueezed", self.taken)
        self.new_weights[new] = self.weights[new] = np.expand_dims(arr, sample_axis)
        return new


#: How an op reading ``squeeze(x, axis=a)`` reads ``x`` (of rank ``rank``) instead:
#: (new op, new constant operands), or None.
SinkRule = Callable[[_State, Node, int, int], Optional[tuple[OpBase, tuple[str, ...]]]]


def _same(st: _State, node: Node, a: int, rank: int):
    return node.op, node.inputs[1:]


def _axis(st: _State, node: Node, a: int, rank: int):
    axis = getattr(node.op, "axis")
    if axis is None:
        return _params(st, node, a, rank)
    b = normalize_axis(axis, rank - 1)
    return node.op.model_copy(update={"axis": b + (b >= a)}), node.inputs[1:]


def _params(st: _State, node: Node, a: int, rank: int):
    return node.op, tuple(st.unsqueezed(p, a - 1, rank - 2) for p in node.inputs[1:])


SINK_RULES: dict[str, SinkRule] = {
    "relu": _same, "activation": _same, "softmax": _axis, "batch_norm": _axis, "scale_shift": _axis,
    "prelu": _params,
}


def _infer(op: OpBase, types: list[TensorType | None]) -> TensorType | None:
    if any(t is None for t in types):
        return None
    try:
        return op.infer(types)  # type: ignore[arg-type]
    except ShapeError:
        return None


@register_pass
class SinkSqueeze(Pass):
    """Guarantees: no squeeze has as its only use a relu, activation, softmax, batch_norm,
    scale_shift or prelu; numerics unchanged.

    Each such pair ``op(squeeze(x))`` becomes ``squeeze(op'(x))``, with the
    op's axis shifted past the restored axis and per-sample constants given a
    size-1 axis there; uses of the op's result read the squeeze's instead.
    """

    name = "sink-squeeze"

    def run(self, graph: Graph) -> PassResult:
        st = _State(graph)
        nodes, outputs = list(graph.nodes), list(graph.outputs)
        while self._sink_one(st, nodes, outputs):
            pass
        if all(a is b for a, b in zip(nodes, graph.nodes)) and len(nodes) == len(graph.nodes):
            return PassResult(graph, False)
        return finish(graph, rebuild(graph, nodes, outputs=outputs, new_weights=st.new_weights))

    def _sink_one(self, st: _State, nodes: list[Node], outputs: list[str]) -> bool:
        counts = use_counts(nodes, outputs)
        types = {o.name: o.type for n in nodes for o in n.outputs}
        for i, sq in enumerate(nodes):
            if sq.op.kind != "squeeze" or counts.get(sq.outputs[0].name, 0) != 1:
                continue
            if sq.outputs[0].name in outputs:
                continue
            j, user = next((j, n) for j, n in enumerate(nodes) if sq.outputs[0].name in n.inputs)
            rule = SINK_RULES.get(user.op.kind)
            in_type = types.get(sq.inputs[0]) or st.input_types.get(sq.inputs[0])
            if rule is None or user.inputs[0] != sq.outputs[0].name or in_type is None:
                continue
            changed = rule(st, user, sq.op.axis, in_type.rank)  # type: ignore[attr-defined]
            if changed is None:
                continue
            op, params = changed
            const_types = [TensorType(shape=st.weights[p].shape, dtype=str(st.weights[p].dtype)) for p in params]
            op_type = _infer(op, [in_type, *const_types])
            if op_type is None:
                continue
            moved = user.model_copy(update={"op": op, "inputs": (sq.inputs[0], *params),
                                            "outputs": (Value(name=user.outputs[0].name, type=op_type),)})
            new_sq = sq.model_copy(update={"inputs": (user.outputs[0].name,)})
            new_sq = new_sq.model_copy(update={"outputs": (Value(name=sq.outputs[0].name,
                                                                 type=_infer(sq.op, [op_type])),)})
            rename = {user.outputs[0].name: sq.outputs[0].name}
            rest = rename_uses(nodes[j + 1:], rename)
            nodes[:] = nodes[:i] + nodes[i + 1:j] + [moved, new_sq] + rest
            outputs[:] = [rename.get(o, o) for o in outputs]
            return True
        return False

