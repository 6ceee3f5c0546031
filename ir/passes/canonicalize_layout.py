"""canonicalize-layout: rewrite channels_last (NHWC / NWC) compute into channels_first.

The backends only implement channels-first kernels; Keras models are mostly
channels_last. Rather than wrapping every op in a transpose pair, the pass
walks the graph once, remembering for each value in which axis order it is
currently available (see ``layout_rules``), and materializes a transpose only
where a consumer needs an order that is not at hand. The per-op decisions live
in ``layout_rules.LAYOUT_RULES`` (one table keyed by op kind), the bookkeeping
in ``layout_context``; this file is the pass itself.
"""

from __future__ import annotations

import logging

from keydnn.errors import PassError
from keydnn.ir.graph import Graph
from keydnn.ir.passes.base import Pass, PassResult, register_pass
from keydnn.ir.passes.layout_context import InputLayout, LayoutContext, needs_canonicalization
from keydnn.ir.passes.layout_rules import LAYOUT_RULES, guard
from keydnn.ir.passes.rewrite import finish, rebuild

__all__ = ["CanonicalizeLayout"]

logger = logging.getLogger(__name__)


@register_pass
class CanonicalizeLayout(Pass):
    """Guarantees: no op computes channels_last (property ``channels-first``), numerics unchanged.

    Transposes appear only at the boundaries: after a channels_last graph input
    (none with ``input_layout="channels_first"``, where that input itself
    becomes channels-first and callers feed NCHW / NCW data), and before a
    graph output whose logical layout is spatial. Graph outputs keep their
    logical layout. A flatten of a permuted tensor feeding dense layers is
    folded into the dense weights (rows permuted), not transposed. A graph
    with nothing channels_last is returned unchanged.
    """

    name = "canonicalize-layout"
    requires = ("typed",)
    ensures = ("channels-first",)

    def __init__(self, input_layout: InputLayout = "keras") -> None:
        if input_layout not in ("keras", "channels_first"):
            raise PassError(
                f"canonicalize-layout: input_layout must be 'keras' or 'channels_first', got {input_layout!r}")
        self.input_layout: InputLayout = input_layout

    def run(self, graph: Graph) -> PassResult:
        if not needs_canonicalization(graph):
            return PassResult(graph, False)
        ctx = LayoutContext(graph, self.input_layout)
        for node in graph.nodes:
            LAYOUT_RULES.get(node.op.kind, guard)(ctx, node)
        outputs = [ctx.output(o) for o in graph.outputs]
        new = rebuild(graph, ctx.nodes, outputs=outputs, inputs=tuple(ctx.inputs), new_weights=ctx.new_weights)
        logger.debug("canonicalize-layout: %d transposes in %s", sum(n.op.kind == "transpose" for n in new.nodes),
                     graph.name)
        return finish(graph, new)

    def __repr__(self) -> str:
        return f"<pass {self.name} input_layout={self.input_layout}>"
