"""infer-shapes: give every value its type from the ops' shape rules."""

from __future__ import annotations

from keydnn.errors import PassError
from keydnn.ir.graph import Graph
from keydnn.ir.ops import ShapeError
from keydnn.ir.passes.base import Pass, PassResult, register_pass
from keydnn.ir.types import TensorType, Value

__all__ = ["InferShapes"]


@register_pass
class InferShapes(Pass):
    """Guarantees: every node output has the type its op's shape rule gives.

    Values downstream of an opaque placeholder whose output shape is unknown
    stay untyped (the graph cannot run anyway). Existing types are recomputed,
    so the pass also repairs stale types after a rewrite.
    """

    name = "infer-shapes"
    ensures = ("typed",)

    def run(self, graph: Graph) -> PassResult:
        types: dict[str, TensorType | None] = {v.name: v.type for v in graph.inputs}
        types.update({c.name: c.type for c in graph.constants})
        nodes = []
        changed = False
        for node in graph.nodes:
            in_types = [types.get(i) for i in node.inputs]
            new_type: TensorType | None
            if any(t is None for t in in_types):
                new_type = None
            else:
                try:
                    new_type = node.op.infer(in_types)  # type: ignore[arg-type]
                except ShapeError as exc:
                    if node.op.kind == "opaque":
                        new_type = None
                    else:
                        label = f"{node.name}" + (f" (Keras layer {node.source!r})" if node.source else "")
                        raise PassError(f"infer-shapes: node {label}, op {node.op.kind}: {exc}") from exc
            if new_type != node.outputs[0].type:
                changed = True
                node = node.model_copy(update={"outputs": (Value(name=node.outputs[0].name, type=new_type),)})
            types[node.outputs[0].name] = new_type
            nodes.append(node)
        return PassResult(graph.replace(nodes=tuple(nodes)) if changed else graph, changed)
