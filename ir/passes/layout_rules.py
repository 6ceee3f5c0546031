"""The per-op layout rules of ``canonicalize-layout``, in one table keyed by op kind.

The pass tracks, for every value of the input graph, a ``Form``: the name of a
tensor in the new graph and the permutation relating it to the value's logical
(Keras) layout, ``new[src] == logical.transpose(perm)``. A rule reads the forms
of its node's operands, asks the context for the forms it needs (the context
inserts a transpose only when a form is not at hand, and caches it), emits the
rewritten node, and records the form of the result. The rule families:

* ``agnostic``: elementwise ops (relu, activation) accept any form and keep it.
* ``axis``: ops with an ``axis`` (softmax, batch_norm, scale_shift per-channel)
  accept any form; the axis is remapped to where the logical axis now sits.
* ``broadcast``: ops with per-sample constant parameters (prelu, scale_shift
  with ``axis=None``) accept any form; the constants are permuted alike.
* ``spatial``: ops with a ``layout`` attribute (conv2d, pools, pad2d, crop2d,
  upsample2d, global pools) run channels-first: an NHWC one gets its operand
  in NCHW order and becomes NCHW.
* ``transpose`` is absorbed into the form (no node); transposes reappear only
  where some consumer needs an order that is not at hand, so pairs cancel.
* ``flatten`` of a permuted tensor whose users (through elementwise ops) are
  all dense layers is emitted on the permuted tensor, and ``dense`` permutes
  the rows of its weight to match; any other flatten gets its logical order.
* ``expand_dims`` / ``squeeze`` move between 3-D and 4-D forms (1-D layers).
* ``merge`` (add, sub, mul, avg, max, min, concat): every operand is brought to
  one common order, the one that needs fewest new transposes (ties go to the
  non-identity order, where channels-first compute continues), so the two
  branches of a residual block meet without transposes; ``concat``'s axis is
  remapped like ``axis`` ops'.
* ``guard`` (reshape, dense on a permuted tensor, opaque, any unlisted op):
  operands in their logical layout, result in its logical layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from keydnn.ir.graph import Node
from keydnn.ir.ops import ExpandDims, Squeeze, kinds_with
from keydnn.ir.ops.base import normalize_axis

if TYPE_CHECKING:  # pragma: no cover
    from keydnn.ir.passes.layout_context import LayoutContext

__all__ = [
    "Form", "LAYOUT_RULES", "CHANNELS_LAST", "CHANNELS_FIRST_OF", "cf_perm", "inverse", "compose",
    "is_identity", "layout_for", "FLATTEN_PASS_THROUGH", "Perm", "guard", "merge",
]

Perm = tuple[int, ...]
CHANNELS_LAST: tuple[str, ...] = ("NHWC", "NWC")
CHANNELS_FIRST_OF: dict[str, str] = {"NHWC": "NCHW", "NWC": "NCW"}
_CHANNELS_LAST_OF = {v: k for k, v in CHANNELS_FIRST_OF.items()}
#: Ops a folded flatten's result may pass through on its way to a dense.
FLATTEN_PASS_THROUGH: frozenset[str] = kinds_with("is_activation")


def cf_perm(rank: int) -> Perm:
    """Channels-last -> channels-first axis order: (0, rank-1, 1, ..., rank-2)."""
    return (0, rank - 1, *range(1, rank - 1))


def inverse(p: Perm) -> Perm:
    inv = [0] * len(p)
    for i, v in enumerate(p):
        inv[v] = i
    return tuple(inv)


def compose(a: Perm, b: Perm) -> Perm:
    """The perm c with ``x.transpose(a).transpose(b) == x.transpose(c)``."""
    return tuple(a[i] for i in b)


def is_identity(p: Perm | None) -> bool:
    return p is None or tuple(p) == tuple(range(len(p)))


def layout_for(logical: str, perm: Perm | None) -> str:
    """Layout name of ``logical.transpose(perm)``: NHWC under cf_perm is NCHW, and back."""
    if is_identity(perm):
        return logical
    assert perm is not None
    if logical in CHANNELS_LAST and tuple(perm) == cf_perm(len(perm)):
        return CHANNELS_FIRST_OF[logical]
    if logical in _CHANNELS_LAST_OF and tuple(perm) == inverse(cf_perm(len(perm))):
        return _CHANNELS_LAST_OF[logical]
    return "ANY"


@dataclass(frozen=True)
class Form:
    """Where a logical value lives in the new graph.

    ``new[src] == logical.transpose(perm)`` (``perm`` None: identity, rank
    unknown). ``rows`` is set instead for a folded flatten: feature ``j`` of
    ``new[src]`` is logical feature ``rows[j]``; ``tag`` names the order for
    the permuted dense weights.
    """

    src: str
    perm: Perm | None = None
    rows: tuple[int, ...] | None = None
    tag: str = ""


Rule = Callable[["LayoutContext", Node], None]


def guard(ctx: "LayoutContext", node: Node) -> None:
    """Operands in logical layout, result in logical layout: always correct, maybe a transpose."""
    ins = [i if ctx.is_constant(i) else ctx.get(i, None) for i in node.inputs]
    ctx.emit(node, node.op, ins, perm=None)


def agnostic(ctx: "LayoutContext", node: Node) -> None:
    f = ctx.form(node.inputs[0])
    ctx.emit(node, node.op, [f.src, *node.inputs[1:]], perm=f.perm, rows=f.rows, tag=f.tag)


def axis(ctx: "LayoutContext", node: Node) -> None:
    f = ctx.form(node.inputs[0])
    if f.rows is not None or is_identity(f.perm):
        return guard(ctx, node)
    assert f.perm is not None
    new_axis = f.perm.index(normalize_axis(node.op.axis, len(f.perm)))  # type: ignore[attr-defined]
    op = node.op.model_copy(update={"axis": new_axis})
    ctx.emit(node, op, [f.src, *node.inputs[1:]], perm=f.perm)


def broadcast(ctx: "LayoutContext", node: Node) -> None:
    f = ctx.form(node.inputs[0])
    if f.rows is not None or is_identity(f.perm):
        return guard(ctx, node)
    assert f.perm is not None
    sample_perm = tuple(p - 1 for p in f.perm[1:])
    tag = layout_for(ctx.logical_layout(node.inputs[0]), f.perm).lower()
    params = []
    for name in node.inputs[1:]:
        arr = ctx.weights[name]
        keep = arr.ndim != len(sample_perm) or arr.ndim < 2  # a scalar, or nothing to permute
        params.append(name if keep else ctx.constant(f"{name}.{tag}", arr.transpose(sample_perm)))
    ctx.emit(node, node.op, [f.src, *params], perm=f.perm)


def scale_shift(ctx: "LayoutContext", node: Node) -> None:
    (axis if node.op.axis is not None else broadcast)(ctx, node)  # type: ignore[attr-defined]


def spatial(ctx: "LayoutContext", node: Node) -> None:
    layout = node.op.layout  # type: ignore[attr-defined]
    if layout not in CHANNELS_LAST:
        return guard(ctx, node)
    rank = 4 if layout == "NHWC" else 3
    x = ctx.get(node.inputs[0], cf_perm(rank))
    op = node.op.model_copy(update={"layout": CHANNELS_FIRST_OF[layout]})
    out_type = node.outputs[0].type
    out_rank = out_type.rank if out_type is not None else rank
    ctx.emit(node, op, [x, *node.inputs[1:]], perm=cf_perm(out_rank) if out_rank == rank else None)


def transpose(ctx: "LayoutContext", node: Node) -> None:
    """Absorbed: the result is the operand's tensor under a composed permutation."""
    f = ctx.form(node.inputs[0])
    t = tuple(node.op.perm)  # type: ignore[attr-defined]
    if f.rows is not None:
        return guard(ctx, node)
    p = f.perm if f.perm is not None else tuple(range(len(t)))
    inv_t = inverse(t)
    ctx.define(node.outputs[0].name, Form(f.src, tuple(inv_t[v] for v in p)))


def flatten(ctx: "LayoutContext", node: Node) -> None:
    f = ctx.form(node.inputs[0])
    in_type = ctx.logical_type(node.inputs[0])
    static = in_type is not None and all(isinstance(d, int) for d in in_type.shape[1:])
    if is_identity(f.perm) or f.rows is not None or not static or not ctx.flatten_feeds_dense(node):
        return guard(ctx, node)
    assert f.perm is not None and in_type is not None
    logical_index = np.arange(int(np.prod(in_type.shape[1:]))).reshape(in_type.shape[1:])
    rows = tuple(int(i) for i in logical_index.transpose([p - 1 for p in f.perm[1:]]).ravel())
    tag = layout_for(ctx.logical_layout(node.inputs[0]), f.perm).lower()
    ctx.emit(node, node.op, [f.src], perm=None, rows=rows, tag=tag)


def dense(ctx: "LayoutContext", node: Node) -> None:
    f = ctx.form(node.inputs[0])
    if f.rows is None:
        return guard(ctx, node)
    w = node.inputs[1]
    new_w = ctx.constant(f"{w}.{f.tag}", ctx.weights[w][list(f.rows)], key=(w, f.src))
    ctx.emit(node, node.op, [f.src, new_w, *node.inputs[2:]], perm=None)


def expand_dims(ctx: "LayoutContext", node: Node) -> None:
    a, logical = node.op.axis, node.op.layout  # type: ignore[attr-defined]
    out_type = node.outputs[0].type
    if out_type is None:
        return guard(ctx, node)
    rank = out_type.rank
    want = cf_perm(rank) if logical in CHANNELS_LAST else tuple(range(rank))
    need = tuple(q - (q > a) for q in want if q != a)
    x = ctx.get(node.inputs[0], need)
    op = ExpandDims(axis=want.index(a), layout=layout_for(logical, want))
    ctx.emit(node, op, [x], perm=want)


def squeeze(ctx: "LayoutContext", node: Node) -> None:
    f = ctx.form(node.inputs[0])
    if f.rows is not None or f.perm is None or is_identity(f.perm):
        return guard(ctx, node)
    a = node.op.axis  # type: ignore[attr-defined]
    out = tuple(v - (v > a) for v in f.perm if v != a)
    op = Squeeze(axis=f.perm.index(a), layout=layout_for(node.op.layout, out))  # type: ignore[attr-defined]
    ctx.emit(node, op, [f.src], perm=out)


def _merge_perm(ctx: "LayoutContext", node: Node) -> Perm | None:
    """The order all operands of a merge op are brought to; None: keep the logical order (guard)."""
    if any(ctx.is_constant(i) for i in node.inputs):
        return None
    forms = [ctx.form(i) for i in node.inputs]
    if any(f.rows is not None or f.perm is None for f in forms) or len({len(f.perm) for f in forms}) != 1:
        return None
    candidates: list[Perm] = []
    for f in forms:
        if f.perm not in candidates:
            candidates.append(f.perm)  # type: ignore[arg-type]

    def cost(p: Perm) -> tuple[int, bool]:
        missing = sum(1 for i in node.inputs if not ctx.available(i, p))
        return missing, is_identity(p)  # fewest new transposes; on a tie, a permuted order

    best = min(candidates, key=cost)
    return None if is_identity(best) else best


def merge(ctx: "LayoutContext", node: Node) -> None:
    perm = _merge_perm(ctx, node)
    if perm is None:
        return guard(ctx, node)
    ins = [ctx.get(i, perm) for i in node.inputs]
    op = node.op
    if hasattr(op, "axis"):
        op = op.model_copy(update={"axis": perm.index(normalize_axis(op.axis, len(perm)))})  # type: ignore[attr-defined]
    ctx.emit(node, op, ins, perm=perm)


#: op kind -> layout rule. An op kind missing here is guarded (always correct).
LAYOUT_RULES: dict[str, Rule] = {
    # layout-agnostic (elementwise)
    "relu": agnostic, "activation": agnostic,
    # axis-carrying: the axis follows the data
    "softmax": axis, "batch_norm": axis, "scale_shift": scale_shift,
    # per-sample constant parameters: permuted with the data
    "prelu": broadcast,
    # layout-sensitive compute: rewritten to channels-first
    "conv2d": spatial, "max_pool2d": spatial, "avg_pool2d": spatial, "global_avg_pool2d": spatial,
    "global_max_pool2d": spatial, "pad2d": spatial, "crop2d": spatial, "upsample2d": spatial,
    # data movement
    "transpose": transpose, "flatten": flatten, "expand_dims": expand_dims, "squeeze": squeeze,
    "dense": dense, "reshape": guard, "opaque": guard,
    # several operands: one common order for all of them
    "add": merge, "sub": merge, "mul": merge, "avg": merge, "max": merge, "min": merge, "concat": merge,
    # sequences: the time axis is not an image axis; operands and results stay in Keras order
    "rnn": guard, "embedding": guard, "sequence_mask": guard, "masking": guard, "repeat_vector": guard,
    "fold_time": guard, "unfold_time": guard, "conv_lstm": guard,
}

from keydnn.ir.passes import layout_rules_reduce as _reduce_rules  # noqa: E402  (issue 18's reducing ops)

LAYOUT_RULES.update({"layer_norm": _reduce_rules.layer_norm, "reduce": _reduce_rules.reduce,
                     "unary": agnostic, "binary": _reduce_rules.binary, "matmul": guard, "slice": guard,
                     "dilate_pad2d": spatial, "resize2d": spatial, "bias_softmax": guard})
