"""fuse-activation: move an activation into the epilogue of the conv2d/dense that feeds it.

A fused epilogue saves a full pass over the activation tensor in every
backend. Only ops whose class declares an ``activation`` field can take one.
"""

from __future__ import annotations

from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import kinds_with
from keydnn.ir.passes.base import Pass, PassResult, register_pass
from keydnn.ir.passes.rewrite import finish, rebuild, rename_uses, use_counts

__all__ = ["FuseActivation", "FUSIBLE_ACTIVATIONS", "FUSING_PRODUCERS"]

#: Activation kinds an epilogue can hold (``keydnn.ir.ops.nn.Epilogue``).
FUSIBLE_ACTIVATIONS: frozenset[str] = kinds_with("is_activation")
#: Producer kinds with an ``activation`` epilogue field.
FUSING_PRODUCERS: frozenset[str] = kinds_with("accepts_epilogue")


@register_pass
class FuseActivation(Pass):
    """Guarantees: no relu/activation node remains whose operand is the only use of a
    conv2d/dense result without an epilogue; numerics unchanged.

    Such a pair becomes the producer with ``activation`` set to the activation
    op (any relu parameters, any function); uses of the activation's result,
    graph outputs included, are renamed to the producer's.
    """

    name = "fuse-activation"

    def run(self, graph: Graph) -> PassResult:
        nodes = list(graph.nodes)
        outputs = list(graph.outputs)
        changed = False
        i = 0
        while i < len(nodes):
            act = nodes[i]
            i += 1
            if act.op.kind not in FUSIBLE_ACTIVATIONS or len(act.inputs) != 1:
                continue
            producer = _producer(nodes, act.inputs[0])
            if producer is None or producer.op.kind not in FUSING_PRODUCERS:
                continue
            if producer.op.activation is not None:  # type: ignore[attr-defined]
                continue
            if use_counts(nodes, outputs).get(act.inputs[0], 0) != 1:
                continue
            fused = producer.model_copy(update={"op": producer.op.model_copy(update={"activation": act.op})})
            nodes[nodes.index(producer)] = fused
            nodes.remove(act)
            i -= 1
            rename = {act.outputs[0].name: producer.outputs[0].name}
            nodes = rename_uses(nodes, rename)
            outputs = [rename.get(o, o) for o in outputs]
            changed = True
        if not changed:
            return PassResult(graph, False)
        return finish(graph, rebuild(graph, nodes, outputs=outputs))


def _producer(nodes: list[Node], value: str) -> Node | None:
    for node in nodes:
        if any(o.name == value for o in node.outputs):
            return node
    return None
