"""General tensor math for Keras operations used as graph nodes (and attention): ``unary``, ``binary``,
``matmul`` and ``slice``.

``binary`` broadcasts with NumPy's rules over whole tensors (batch axis
included), so an operand may be a constant of any lower rank (``x * 0.5``,
``x + bias``); comparisons give 0.0 / 1.0 in the graph's dtype (Keras gives
booleans, which a model must ``cast`` back to float to compute with).
``matmul`` is NumPy's: the last two axes multiply, leading axes broadcast.
``unary`` holds the elementwise functions that the ``activation`` op does not:
plain math (sqrt, exp, ...) and Keras's newer activations (hard_silu, mish, ...),
with up to two float parameters.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator

from keydnn.ir.functions import BINARY_NAMES, UNARY_FUNCTIONS, UNARY_NAMES
from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq
from keydnn.ir.types import Dim, TensorType

__all__ = ["Unary", "Binary", "MatMul", "Slice", "BiasSoftmax", "UNARY_FUNCTIONS", "BINARY_FUNCTIONS", "broadcast_shapes"]

#: The ``unary`` op's functions come from the one table of scalar functions (``keydnn.ir.functions``).
UnaryFunction = Literal[UNARY_NAMES]  # type: ignore[valid-type]

#: Functions of ``binary`` (the one table: ``keydnn.ir.functions.BINARY``).
BINARY_FUNCTIONS: tuple[str, ...] = BINARY_NAMES
BinaryFunction = Literal[BINARY_NAMES]  # type: ignore[valid-type]


def broadcast_shapes(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """NumPy's broadcast of two shapes (symbolic dims match anything; size 1 gives way)."""
    rank = max(len(a), len(b))
    a = (1,) * (rank - len(a)) + tuple(a)
    b = (1,) * (rank - len(b)) + tuple(b)
    out: list[Dim] = []
    for x, y in zip(a, b):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif isinstance(x, str) or isinstance(y, str):
            out.append(y if isinstance(x, str) else x)
        else:
            raise ShapeError(f"shapes {list(a)} and {list(b)} do not broadcast")
    return tuple(out)


class Unary(OpBase):
    """``function`` applied elementwise; ``a`` and ``b`` parameterize clip, squareplus, celu, shrinks, threshold."""

    kind: Literal["unary"] = "unary"
    function: UnaryFunction
    a: float = 0.0
    b: float = 0.0

    def infer(self, inputs: list[TensorType]) -> TensorType:
        return inputs[0]


class Binary(OpBase):
    """``function(x, y)`` elementwise with NumPy broadcasting; the result keeps the batch axis first."""

    kind: Literal["binary"] = "binary"
    function: BinaryFunction

    operands: ClassVar[tuple[str, ...]] = ("x", "y")
    #: Either operand may be a constant (``x * 0.5``, ``1.0 - x``); the verifier allows it.
    may_be_constant: ClassVar[tuple[str, ...]] = ("x", "y")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x, y = inputs
        shape = broadcast_shapes(x.shape, y.shape)
        if len(shape) < 1:
            raise ShapeError("binary needs a batch axis")
        layout = x.layout if x.shape == shape else y.layout if y.shape == shape else "ANY"
        return TensorType(shape=shape, dtype=x.dtype, layout=layout)


class MatMul(OpBase):
    """NumPy's ``matmul`` of two rank >= 2 tensors: ``(..., m, k) @ (..., k, n)``, leading axes broadcast.

    ``transpose_b`` multiplies by ``y`` with its last two axes swapped (attention's ``q @ k^T``)
    without a transpose node; ``scale`` multiplies the product (attention's ``1/sqrt(d)``).
    """

    kind: Literal["matmul"] = "matmul"
    transpose_b: bool = False
    scale: float = 1.0

    operands: ClassVar[tuple[str, ...]] = ("x", "y")
    may_be_constant: ClassVar[tuple[str, ...]] = ("x", "y")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x, y = inputs
        if x.rank < 2 or y.rank < 2:
            raise ShapeError(f"matmul needs operands of rank >= 2, got {x} and {y}")
        yk, yn = (y.shape[-1], y.shape[-2]) if self.transpose_b else (y.shape[-2], y.shape[-1])
        if not dim_eq(x.shape[-1], yk):
            raise ShapeError(f"matmul: {x} @ {y}{'^T' if self.transpose_b else ''} disagree on the inner axis")
        lead = broadcast_shapes(x.shape[:-2], y.shape[:-2])
        return TensorType(shape=lead + (x.shape[-2], yn), dtype=x.dtype)


class Slice(OpBase):
    """``x[:, starts[0]:stops[0]:steps[0], ...]`` over the non-batch axes (static, positive steps; bounds
    already clipped to the axis)."""

    kind: Literal["slice"] = "slice"
    starts: tuple[int, ...]
    stops: tuple[int, ...]
    steps: tuple[int, ...]

    @field_validator("steps")
    @classmethod
    def _steps_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 1 for s in v):
            raise ValueError(f"slice steps must be positive, got {list(v)}")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        n = len(self.starts)
        if not (n == len(self.stops) == len(self.steps) == x.rank - 1):
            raise ShapeError(f"slice bounds {list(self.starts)}:{list(self.stops)} do not fit {x}")
        shape: list[Dim] = [x.shape[0]]
        for d, lo, hi, st in zip(x.shape[1:], self.starts, self.stops, self.steps):
            if not isinstance(d, int) or not 0 <= lo <= hi <= d:
                raise ShapeError(f"slice {lo}:{hi} does not fit axis of size {d} of {x}")
            shape.append(max(0, -(-(hi - lo) // st)))
        return TensorType(shape=tuple(shape), dtype=x.dtype)


class BiasSoftmax(OpBase):
    """``softmax(x + bias [+ bias2])`` over the last axis, each bias broadcasting (NumPy rules) to ``x``.

    What ``fuse-masked-softmax`` makes of attention's ``scores + mask`` followed by a softmax (the
    ``1/sqrt(d)`` scale already rides on the ``matmul``): one pass over the scores instead of three.
    """

    kind: Literal["bias_softmax"] = "bias_softmax"

    operands: ClassVar[tuple[str, ...]] = ("x", "bias", "bias2?")
    may_be_constant: ClassVar[tuple[str, ...]] = ("bias", "bias2")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if x.rank < 2:
            raise ShapeError(f"bias_softmax needs rank >= 2, got {x}")
        for b in inputs[1:]:
            if b.rank > x.rank or broadcast_shapes(x.shape, b.shape) != tuple(x.shape):
                if b.rank > x.rank or any(not (d == 1 or dim_eq(d, s)) for d, s in
                                          zip(b.shape[::-1], x.shape[::-1])):
                    raise ShapeError(f"bias {b} does not broadcast to {x} without growing it")
        return x
