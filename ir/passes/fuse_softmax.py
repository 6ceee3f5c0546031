"""fuse-masked-softmax: ``softmax(x + bias)`` over the last axis becomes one ``bias_softmax`` node.

Attention lowers to ``matmul`` (scale folded in) -> ``binary add`` of the mask
bias (causal, attention_mask) -> ``softmax``; each is a full pass over the
(batch, heads, queries, keys) scores. Fused, the backends read the scores and
the broadcast biases once, in the softmax's own loop.
"""

from __future__ import annotations

from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import BiasSoftmax
from keydnn.ir.ops.base import normalize_axis
from keydnn.ir.passes.base import Pass, PassResult, register_pass
from keydnn.ir.passes.rewrite import finish, rebuild, use_counts

__all__ = ["FuseMaskedSoftmax"]


def _is_add(node: Node | None) -> bool:
    return node is not None and node.op.kind == "binary" and node.op.function == "add"  # type: ignore[attr-defined]


@register_pass
class FuseMaskedSoftmax(Pass):
    """Guarantees: no softmax over the last axis (nor bias_softmax with one bias) reads the only use of a
    ``binary add`` whose first operand has the result's full shape; numerics unchanged up to rounding.

    ``softmax(add(x, b))`` becomes ``bias_softmax(x, b)``, and ``bias_softmax(add(x, c), b)`` becomes
    ``bias_softmax(x, b, c)``.
    """

    name = "fuse-masked-softmax"

    def run(self, graph: Graph) -> PassResult:
        nodes = list(graph.nodes)
        outputs = list(graph.outputs)
        types = graph.value_types()
        constants = {c.name for c in graph.constants}
        changed = True
        any_change = False
        while changed:
            changed = False
            producers = {o.name: n for n in nodes for o in n.outputs}
            uses = use_counts(nodes, outputs)
            for i, node in enumerate(nodes):
                kind = node.op.kind
                if kind == "softmax":
                    t = types.get(node.inputs[0])
                    if t is None or normalize_axis(node.op.axis, t.rank) != t.rank - 1:  # type: ignore[attr-defined]
                        continue
                    biases: list[str] = []
                elif kind == "bias_softmax" and len(node.inputs) == 2:
                    biases = [node.inputs[1]]
                else:
                    continue
                add = producers.get(node.inputs[0])
                if not _is_add(add) or uses.get(node.inputs[0], 0) != 1:
                    continue
                x, b = add.inputs  # type: ignore[union-attr]
                out = types.get(add.outputs[0].name)  # type: ignore[union-attr]
                if out is None:
                    continue
                if not self._full(x, out, types, constants):
                    x, b = b, x
                    if not self._full(x, out, types, constants):
                        continue
                fused = node.model_copy(update={"op": BiasSoftmax(), "inputs": (x, *biases, b)})
                nodes[i] = fused
                nodes.remove(add)  # type: ignore[arg-type]
                changed = any_change = True
                break
        if not any_change:
            return PassResult(graph, False)
        return finish(graph, rebuild(graph, nodes, outputs=outputs))

    @staticmethod
    def _full(x: str, out, types: dict, constants: set[str]) -> bool:
        """``x`` is a computed value with the add's full result shape (the softmax's own operand)."""
        t = types.get(x)
        return x not in constants and t is not None and tuple(t.shape) == tuple(out.shape)
