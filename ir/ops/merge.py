"""Merge ops: elementwise combinations of several tensors, and concatenation.

These are what Keras's merge layers (Add, Subtract, Multiply, Average,
Maximum, Minimum, Concatenate) lower to, and the ops that make a graph a DAG
rather than a chain.

Operands are activations, never constants, and all have the same rank and
dtype. Broadcasting is NumPy's on equal ranks: along every axis (the batch
axis included) the operands' sizes are equal or 1, and the result takes the
size that is not 1. Keras also merges tensors of different ranks by inserting
size-1 axes right after the batch axis of the lower-rank ones; the frontend
makes that explicit with ``expand_dims`` nodes, so the ops themselves never
align ranks.

* ``add(x, y, ...)``: ``x + y + ...`` (two or more operands, summed left to right).
* ``sub(x, y)``: ``x - y`` (exactly two).
* ``mul(x, y, ...)``: ``x * y * ...``.
* ``avg(x, y, ...)``: ``(x + y + ...) / n`` for ``n`` operands.
* ``max(x, y, ...)`` / ``min(x, y, ...)``: elementwise maximum / minimum.
* ``concat(x, ...){axis}``: concatenation along ``axis`` (not the batch axis;
  negative counts from the end); every other axis must agree exactly (no
  broadcasting). One operand is allowed (a copy).

The result's layout is the operands' common layout, ignoring ``ANY``
operands (a broadcast parameter tensor often has none); ``ANY`` when they
disagree.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq, normalize_axis
from keydnn.ir.types import Dim, TensorType

__all__ = ["Add", "Sub", "Mul", "Avg", "Max", "Min", "Concat", "MERGE_KINDS", "ELEMENTWISE_MERGE_KINDS",
           "broadcast_shapes"]


def _common(inputs: list[TensorType], what: str) -> tuple[int, str, str]:
    """(rank, dtype, layout) shared by the operands of a merge op."""
    if not inputs:
        raise ShapeError(f"{what} needs at least one operand")
    ranks = {t.rank for t in inputs}
    if len(ranks) != 1:
        raise ShapeError(f"{what} operands must have the same rank, got {', '.join(str(t) for t in inputs)}")
    dtypes = {t.dtype for t in inputs}
    if len(dtypes) != 1:
        raise ShapeError(f"{what} operands must have the same dtype, got {sorted(dtypes)}")
    layouts = {t.layout for t in inputs} - {"ANY"}
    layout = layouts.pop() if len(layouts) == 1 else "ANY"
    (rank,) = ranks
    if rank < 1:
        raise ShapeError(f"{what} operands need a batch axis")
    return rank, inputs[0].dtype, layout


def broadcast_shapes(shapes: list[tuple[Dim, ...]], what: str = "merge") -> tuple[Dim, ...]:
    """NumPy broadcasting of equal-rank shapes: per axis, sizes equal or 1 (a symbol may be either)."""
    out: list[Dim] = []
    for axis, dims in enumerate(zip(*shapes)):
        sized = [d for d in dims if isinstance(d, int) and d != 1]
        if len(set(sized)) > 1:
            raise ShapeError(f"{what}: sizes {list(dims)} along axis {axis} neither agree nor broadcast (size 1)")
        symbols = [d for d in dims if isinstance(d, str)]
        if sized:
            out.append(sized[0])
        elif symbols:
            out.append(symbols[0])
        else:
            out.append(1)
    return tuple(out)


class _ElementwiseMerge(OpBase):
    """Shared shape rule: broadcast equal-rank operands."""

    is_merge: ClassVar[bool] = True
    is_elementwise_merge: ClassVar[bool] = True
    writes_in_place: ClassVar[bool] = True

    operands: ClassVar[tuple[str, ...]] = ("x", "y", "xs*")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        rank, dtype, layout = _common(inputs, self.kind)  # type: ignore[attr-defined]
        shape = broadcast_shapes([t.shape for t in inputs], self.kind)  # type: ignore[attr-defined]
        return TensorType(shape=shape, dtype=dtype, layout=layout)  # type: ignore[arg-type]


class Add(_ElementwiseMerge):
    """``x + y + ...``, broadcast (Keras Add)."""

    kind: Literal["add"] = "add"


class Sub(_ElementwiseMerge):
    """``x - y``, broadcast (Keras Subtract)."""

    kind: Literal["sub"] = "sub"
    operands: ClassVar[tuple[str, ...]] = ("x", "y")


class Mul(_ElementwiseMerge):
    """``x * y * ...``, broadcast (Keras Multiply)."""

    kind: Literal["mul"] = "mul"


class Avg(_ElementwiseMerge):
    """``(x + y + ...) / n``, broadcast (Keras Average)."""

    kind: Literal["avg"] = "avg"


class Max(_ElementwiseMerge):
    """Elementwise maximum, broadcast (Keras Maximum)."""

    kind: Literal["max"] = "max"


class Min(_ElementwiseMerge):
    """Elementwise minimum, broadcast (Keras Minimum)."""

    kind: Literal["min"] = "min"


class Concat(OpBase):
    """Concatenation along ``axis`` (never the batch axis 0; negative counts from the end)."""

    kind: Literal["concat"] = "concat"
    is_merge: ClassVar[bool] = True
    axis: int = -1

    operands: ClassVar[tuple[str, ...]] = ("x", "xs*")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        rank, dtype, layout = _common(inputs, "concat")
        axis = normalize_axis(self.axis, rank)
        if axis == 0:
            raise ShapeError(f"concat along the batch axis (axis {self.axis} of rank {rank}) is not supported")
        shape = list(inputs[0].shape)
        for t in inputs[1:]:
            for i, (a, b) in enumerate(zip(shape, t.shape)):
                if i != axis and not dim_eq(a, b):
                    raise ShapeError(f"concat along axis {axis}: operands differ on axis {i} "
                                     f"({', '.join(str(u) for u in inputs)})")
        sizes = [t.shape[axis] for t in inputs]
        total: Dim = sum(sizes) if all(isinstance(d, int) for d in sizes) else "C"  # type: ignore[arg-type]
        shape[axis] = total
        for i, d in enumerate(shape):  # a static size wins over a symbol on the other axes
            if isinstance(d, str) and i != axis:
                static = [t.shape[i] for t in inputs if isinstance(t.shape[i], int)]
                shape[i] = static[0] if static else d
        return TensorType(shape=tuple(shape), dtype=dtype, layout=layout)  # type: ignore[arg-type]


#: Kinds of the elementwise merge ops (broadcast, layout-agnostic).
ELEMENTWISE_MERGE_KINDS: frozenset[str] = frozenset(
    kind for kind, cls in OpBase.registered().items() if cls.is_elementwise_merge)
#: Every merge kind.
MERGE_KINDS: frozenset[str] = ELEMENTWISE_MERGE_KINDS | {"concat"}
