"""Layout rules of issue 18's ops: ``layer_norm`` and ``reduce`` (their ``axes`` follow the data), ``binary``.

A permuted operand (``new == logical.transpose(perm)``) keeps its order: each
logical axis ``a`` is at ``perm.index(a)`` in the new tensor, so the op's axes
are remapped there, and ``layer_norm``'s sample-shaped ``gamma``/``beta`` are
permuted like the data (as ``broadcast`` rules do). A ``reduce`` without
``keepdims`` drops axes, so its result's order is the operand's order with the
reduced axes taken out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keydnn.ir.graph import Node
from keydnn.ir.ops.reduce import norm_axes
from keydnn.ir.passes.layout_rules import guard, is_identity, layout_for, merge

if TYPE_CHECKING:  # pragma: no cover
    from keydnn.ir.passes.layout_context import LayoutContext

__all__ = ["layer_norm", "reduce", "binary"]


def layer_norm(ctx: "LayoutContext", node: Node) -> None:
    f = ctx.form(node.inputs[0])
    if f.rows is not None or is_identity(f.perm):
        return guard(ctx, node)
    assert f.perm is not None
    axes = tuple(f.perm.index(a) for a in norm_axes(node.op.axes, len(f.perm)))  # type: ignore[attr-defined]
    sample_perm = tuple(p - 1 for p in f.perm[1:])
    tag = layout_for(ctx.logical_layout(node.inputs[0]), f.perm).lower()
    params = []
    for name in node.inputs[1:]:
        arr = ctx.weights[name]
        keep = arr.ndim != len(sample_perm) or arr.ndim < 2
        params.append(name if keep else ctx.constant(f"{name}.{tag}", arr.transpose(sample_perm)))
    op = node.op.model_copy(update={"axes": tuple(sorted(axes))})
    ctx.emit(node, op, [f.src, *params], perm=f.perm)


def reduce(ctx: "LayoutContext", node: Node) -> None:
    f = ctx.form(node.inputs[0])
    if f.rows is not None or is_identity(f.perm):
        return guard(ctx, node)
    assert f.perm is not None
    logical_axes = norm_axes(node.op.axes, len(f.perm))  # type: ignore[attr-defined]
    axes = tuple(sorted(f.perm.index(a) for a in logical_axes))
    op = node.op.model_copy(update={"axes": axes})
    if node.op.keepdims:  # type: ignore[attr-defined]
        out_perm = f.perm
    else:
        kept = [a for a in f.perm if a not in logical_axes]
        out_perm = tuple(sorted(kept).index(a) for a in kept)
    ctx.emit(node, op, [f.src], perm=out_perm)


def binary(ctx: "LayoutContext", node: Node) -> None:
    """A tensor with a scalar constant keeps its form (elementwise); two tensors of one rank meet in one order
    (as merges do); anything else (a constant of another shape) runs in the logical layout."""
    consts = [ctx.is_constant(i) for i in node.inputs]
    if any(consts):
        if all(consts):
            return guard(ctx, node)
        k = consts.index(False)
        c = node.inputs[1 - k]
        if ctx.weights[c].size != 1:
            return guard(ctx, node)
        f = ctx.form(node.inputs[k])
        if f.rows is not None:
            return guard(ctx, node)
        ins = [f.src, c] if k == 0 else [c, f.src]
        ctx.emit(node, node.op, ins, perm=f.perm)
        return None
    return merge(ctx, node)
