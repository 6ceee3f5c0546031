"""Converters for Keras merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate.

They only occur in Functional models, where the driver hands them every
input tensor of the call (``GraphLayerContext.inputs``). Keras merges tensors
of different ranks by inserting size-1 axes right after the batch axis of the
lower-rank ones, then broadcasting; that insertion becomes explicit
``expand_dims`` nodes here, so the IR ops only broadcast equal ranks.
"""

from __future__ import annotations

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.lower import MULTI_INPUT_LAYERS
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Add, Avg, Concat, ExpandDims, Max, Min, Mul, OpBase, Reshape, ShapeError, Sub
from keydnn.ir.ops.merge import broadcast_shapes
from keydnn.ir.types import TensorType

__all__ = ["ELEMENTWISE_MERGE_LAYERS"]

#: Keras merge layer -> IR op class.
ELEMENTWISE_MERGE_LAYERS: dict[str, type[OpBase]] = {
    "Add": Add, "Subtract": Sub, "Multiply": Mul, "Average": Avg, "Maximum": Max, "Minimum": Min,
}
_ARITY = {"Subtract": "exactly two"}


def _operands(ctx: LayerContext) -> tuple[list[str], list[TensorType]]:
    """The call's input tensors and their types (refused when one is unknown)."""
    names = list(getattr(ctx, "inputs", ()) or ())
    types = list(getattr(ctx, "input_types", ()) or ())
    if not names:
        ctx.refuse("a merge layer needs its input tensors; it only occurs in Functional models",
                   supported="a Functional model calling the layer on a list of tensors")
        raise Unconvertible
    if any(t is None for t in types):  # after an unsupported layer: the driver says so
        ctx.x_type = None
        ctx.need_type()  # raises Unconvertible, marking the input as unknown
    return names, types  # type: ignore[return-value]


def _emit_on(ctx: LayerContext, x: str, x_type: TensorType, op: OpBase, *rest: str, suffix: str | None) -> str:
    ctx.x, ctx.x_type = x, x_type
    return ctx.emit(op, *rest, suffix=suffix)


def _same_rank(ctx: LayerContext, names: list[str], types: list[TensorType]) -> list[str]:
    """Give lower-rank operands size-1 axes after the batch axis, as Keras does before broadcasting."""
    rank = max(t.rank for t in types)
    out = []
    for i, (name, typ) in enumerate(zip(names, types)):
        missing = rank - typ.rank
        if missing and all(isinstance(d, int) for d in typ.shape[1:]):
            name = _emit_on(ctx, name, typ, Reshape(shape=(1,) * missing + tuple(typ.shape[1:])),  # type: ignore[arg-type]
                            suffix=f"expand{i}")
        else:
            for k in range(missing):
                name = _emit_on(ctx, name, typ, ExpandDims(axis=1), suffix=f"expand{i}" + (f"_{k}" if k else ""))
                typ = ctx.x_type  # type: ignore[assignment]
        out.append(name)
    return out


def convert_elementwise_merge(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    cls = ctx.layer.class_name
    names, types = _operands(ctx)
    if cls == "Subtract" and len(names) != 2:
        ctx.refuse(f"Subtract takes exactly two inputs, got {len(names)}", field="inputs", value=len(names),
                   supported="exactly two input tensors")
        raise Unconvertible
    if len(names) == 1:  # Keras 3 accepts a one-element list: the identity
        ctx.x, ctx.x_type = names[0], types[0]
        return
    if len({t.rank for t in types}) > 1:
        names = _same_rank(ctx, names, types)
        types = [ctx.type_of(n) for n in names]  # type: ignore[misc]
    try:
        broadcast_shapes([t.shape for t in types], cls)
    except ShapeError as exc:
        ctx.refuse(f"inputs do not broadcast: {exc}", field="inputs",
                   value=[str(t) for t in types], supported="shapes that are equal or 1 along every axis")
        raise Unconvertible from exc
    op = ELEMENTWISE_MERGE_LAYERS[cls]()
    _emit_on(ctx, names[0], types[0], op, *names[1:], suffix=None)


for _name in ELEMENTWISE_MERGE_LAYERS:
    register_converter(_name, constraints=(
        ("two inputs" if _name == "Subtract" else "two or more inputs")
        + "; broadcasting as Keras does (size-1 axes; lower-rank inputs get size-1 axes after the batch axis)"
    ))(convert_elementwise_merge)
    MULTI_INPUT_LAYERS.add(_name)


@register_converter("Concatenate", constraints=(
    "any axis but the batch axis (negative allowed); inputs of one rank that agree off the axis"))
def convert_concatenate(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    names, types = _operands(ctx)
    axis = ctx.cfg("axis", -1)
    if not isinstance(axis, int) or isinstance(axis, bool):
        ctx.refuse(f"unsupported axis {axis!r}", field="axis", value=axis, supported="a single integer axis")
        raise Unconvertible
    ranks = {t.rank for t in types}
    if len(ranks) != 1:
        ctx.refuse(f"inputs have different ranks {sorted(ranks)}", field="inputs", value=[str(t) for t in types],
                   supported="inputs of one rank")
        raise Unconvertible
    (rank,) = ranks
    if not -rank <= axis < rank or axis % rank == 0:
        ctx.refuse(f"axis {axis} is {'the batch axis' if -rank <= axis < rank else 'out of range'} of rank-{rank} "
                   "inputs", field="axis", value=axis, supported=f"1..{rank - 1} or -{rank - 1}..-1")
        raise Unconvertible
    if len(names) == 1:
        ctx.x, ctx.x_type = names[0], types[0]
        return
    _emit_on(ctx, names[0], types[0], Concat(axis=axis), *names[1:], suffix=None)


MULTI_INPUT_LAYERS.add("Concatenate")
