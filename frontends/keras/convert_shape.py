"""Data-movement layers: Reshape (row-major, in Keras' axis order) and Permute (a transpose)."""

from __future__ import annotations

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.values import is_int, is_int_list
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Reshape, Transpose

__all__: list[str] = []

#: (input layout, perm including the batch axis) -> the layout Keras' result is in.
_RELAYOUT = {
    ("NHWC", (0, 3, 1, 2)): "NCHW", ("NCHW", (0, 2, 3, 1)): "NHWC",
    ("NWC", (0, 2, 1)): "NCW", ("NCW", (0, 2, 1)): "NWC",
}


@register_converter("Reshape", constraints=(
    "target_shape with static sizes and at most one -1; row-major over Keras' axis order "
    "(canonicalize-layout restores that order first)"))
def convert_reshape(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    target = ctx.cfg("target_shape")
    if not (isinstance(target, list) and target and all(is_int(d) and (d >= 1 or d == -1) for d in target)
            and sum(d == -1 for d in target) <= 1):
        ctx.refuse(f"invalid target_shape {target!r}", field="target_shape", value=target,
                   supported="a non-empty list of positive sizes with at most one -1")
        raise Unconvertible
    ctx.emit(Reshape(shape=tuple(int(d) for d in target), layout="NC" if len(target) == 1 else "ANY"))


@register_converter("Permute", constraints="dims: any permutation of the non-batch axes (1-based, as Keras)")
def convert_permute(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    dims = ctx.cfg("dims")
    x = ctx.need_type()
    if not (is_int_list(dims) and sorted(dims) == list(range(1, x.rank))):
        ctx.refuse(f"invalid dims {dims!r}", field="dims", value=dims,
                   supported=f"a permutation of 1..{x.rank - 1}")
        raise Unconvertible
    perm = (0, *(int(d) for d in dims))
    layout = _RELAYOUT.get((x.layout, perm), "NC" if x.rank == 2 else "ANY")
    ctx.emit(Transpose(perm=perm, layout=layout))  # type: ignore[arg-type]
