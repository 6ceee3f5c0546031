"""The op kinds the code generator treats specially, read off the op traits, and the one graph rewrite it
makes while planning: activations folded into the elementwise merge that feeds them.

Apart from ``program`` because the storage planner (``storage``) and the per-op mode (``ops``) read these
sets too, and none of them needs the generator itself; ``program`` re-exports them.
"""

from __future__ import annotations

from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import kinds_with

__all__ = ["VIEW_KINDS", "BATCH_VIEW_KINDS", "MERGE_KINDS", "FUSIBLE_INTO_MERGE", "INPLACE_KINDS",
           "fold_merge_activations"]

#: Ops that never move data: their result is a reshaped view of their operand's storage.
VIEW_KINDS = kinds_with("is_view")
#: Views that move an axis into or out of the batch (``fold_time`` / ``unfold_time``): see ``Val.fold``.
BATCH_VIEW_KINDS = kinds_with("is_batch_view")
#: Elementwise merges, and the activations the generated code folds into a merge's last pass when the merge's
#: result feeds nothing else (a residual block's add + relu: one pass over the tensor instead of two).
MERGE_KINDS = kinds_with("is_elementwise_merge")
FUSIBLE_INTO_MERGE = kinds_with("is_activation")
#: Ops that may write over their first operand when it is dead afterwards.
INPLACE_KINDS = kinds_with("writes_in_place")


def fold_merge_activations(graph: Graph) -> dict[str, Node]:
    """Activation nodes to fold into the merge that feeds them -> that merge: the merge's result has no
    other use and is not a graph output, so the activation's result can take its storage (a view)."""
    uses = {name: len(users) for name, users in graph.users().items()}
    producers = graph.producers()
    folded = {}
    for node in graph.nodes:
        if node.op.kind not in FUSIBLE_INTO_MERGE or len(node.inputs) != 1:
            continue
        src = producers.get(node.inputs[0])
        if (src is not None and src.op.kind in MERGE_KINDS and uses.get(node.inputs[0]) == 1
                and node.inputs[0] not in graph.outputs and src.name not in folded.values()):
            folded[node.name] = src
    return folded
