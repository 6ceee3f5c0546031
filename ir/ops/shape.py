"""Data-movement ops: flatten, reshape, transpose, expand_dims, squeeze, and the opaque placeholder.

1-D layers: keydnn has no 1-D window ops. A 1-D layer (Conv1D, MaxPooling1D,
AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D, ZeroPadding1D,
Cropping1D, UpSampling1D) is the matching 2-D op on a size-1 H axis, between an
``expand_dims`` that inserts that axis and a ``squeeze`` that removes it:

* channels_last, (N, W, C) "NWC": ``expand_dims{axis=1, layout=NHWC}`` gives
  (N, 1, W, C); the 2-D op runs with ``layout=NHWC``; ``squeeze{axis=1,
  layout=NWC}`` returns to (N, W', C').
* channels_first, (N, C, W) "NCW": ``expand_dims{axis=2, layout=NCHW}`` gives
  (N, C, 1, W); the 2-D op runs with ``layout=NCHW``; ``squeeze{axis=2,
  layout=NCW}``.

The 2-D op's H parameters are the identity (kernel 1, stride 1, dilation 1,
pads 0); a Conv1D kernel (k, in, out) becomes the IR weight (out, in/groups,
1, k). Global 1-D pools need no ``squeeze`` unless ``keepdims`` (the 2-D
global pool already returns (N, C)). So 2-D kernels run 1-D layers unchanged,
``canonicalize-layout`` moves expand/squeeze between layouts like any other
axis-aware op, and ``fold-constants`` cancels a ``squeeze`` followed by an
``expand_dims`` of the same axis, leaving one pair per run of 1-D layers.
"""

from __future__ import annotations

from math import prod
from typing import ClassVar, Literal, Optional

from pydantic import field_validator

from keydnn.ir.ops.base import OpBase, ShapeError
from keydnn.ir.types import Dim, Layout, TensorType

__all__ = ["Flatten", "Reshape", "Transpose", "ExpandDims", "Squeeze", "Opaque"]


class Flatten(OpBase):
    """Row-major flatten of every axis but the batch (in the tensor's current layout)."""

    kind: Literal["flatten"] = "flatten"
    is_view: ClassVar[bool] = True

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if x.rank < 1:
            raise ShapeError("flatten needs a batch axis")
        rest = x.shape[1:]
        size: Dim = prod(rest) if all(isinstance(d, int) for d in rest) else "F"  # type: ignore[arg-type]
        return TensorType(shape=(x.shape[0], size), dtype=x.dtype, layout="NC")


class Reshape(OpBase):
    """Row-major reshape of the non-batch axes to ``shape`` (one entry may be -1)."""

    kind: Literal["reshape"] = "reshape"
    is_view: ClassVar[bool] = True
    layout_is_result_only: ClassVar[bool] = True
    shape: tuple[int, ...]
    layout: Layout = "ANY"

    @field_validator("shape")
    @classmethod
    def _shape_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if sum(1 for d in v if d == -1) > 1 or any(d < -1 or d == 0 for d in v):
            raise ValueError(f"reshape target {list(v)} must be positive sizes with at most one -1")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        rest = x.shape[1:]
        if not all(isinstance(d, int) for d in rest):
            raise ShapeError(f"reshape needs static non-batch dims, got {x}")
        total = prod(rest)  # type: ignore[arg-type]
        known = prod(d for d in self.shape if d != -1)
        if -1 in self.shape:
            if total % known:
                raise ShapeError(f"cannot reshape {x} to {list(self.shape)}")
            out = tuple(total // known if d == -1 else d for d in self.shape)
        else:
            out = self.shape
        if prod(out) != total:
            raise ShapeError(f"cannot reshape {x} ({total} elements per sample) to {list(self.shape)}")
        return TensorType(shape=(x.shape[0],) + out, dtype=x.dtype, layout=self.layout)


class Transpose(OpBase):
    """Permute axes (``perm`` includes the batch axis); ``layout`` names the result's layout."""

    kind: Literal["transpose"] = "transpose"
    layout_is_result_only: ClassVar[bool] = True
    perm: tuple[int, ...]
    layout: Layout = "ANY"

    @field_validator("perm")
    @classmethod
    def _perm_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if sorted(v) != list(range(len(v))):
            raise ValueError(f"perm {list(v)} is not a permutation")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if len(self.perm) != x.rank:
            raise ShapeError(f"perm {list(self.perm)} does not match rank {x.rank}")
        return TensorType(shape=tuple(x.shape[p] for p in self.perm), dtype=x.dtype, layout=self.layout)


class ExpandDims(OpBase):
    """Insert a size-1 axis at position ``axis`` of the output (>= 1: the batch stays first).

    ``layout`` names the result's layout (e.g. NWC -> NHWC with ``axis=1``);
    values are unchanged, only the shape grows: (N, W, C) -> (N, 1, W, C).
    """

    kind: Literal["expand_dims"] = "expand_dims"
    is_view: ClassVar[bool] = True
    layout_is_result_only: ClassVar[bool] = True
    axis: int
    layout: Layout = "ANY"

    @field_validator("axis")
    @classmethod
    def _axis_ok(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"expand_dims axis must be >= 1 (axis 0 is the batch), got {v}")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if self.axis > x.rank:
            raise ShapeError(f"expand_dims axis {self.axis} is out of range for {x}")
        shape = x.shape[: self.axis] + (1,) + x.shape[self.axis:]
        return TensorType(shape=shape, dtype=x.dtype, layout=self.layout)


class Squeeze(OpBase):
    """Remove the size-1 axis ``axis`` (>= 1); ``layout`` names the result's layout."""

    kind: Literal["squeeze"] = "squeeze"
    is_view: ClassVar[bool] = True
    layout_is_result_only: ClassVar[bool] = True
    axis: int
    layout: Layout = "ANY"

    @field_validator("axis")
    @classmethod
    def _axis_ok(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"squeeze axis must be >= 1 (axis 0 is the batch), got {v}")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if self.axis >= x.rank:
            raise ShapeError(f"squeeze axis {self.axis} is out of range for {x}")
        if isinstance(x.shape[self.axis], int) and x.shape[self.axis] != 1:
            raise ShapeError(f"squeeze axis {self.axis} of {x} has size {x.shape[self.axis]}, not 1")
        shape = x.shape[: self.axis] + x.shape[self.axis + 1:]
        return TensorType(shape=shape, dtype=x.dtype, layout=self.layout)


class Opaque(OpBase):
    """A layer keydnn could not convert (non-strict mode). It blocks execution, never the math.

    It reads every tensor the layer was called on (several in a Functional model).
    """

    kind: Literal["opaque"] = "opaque"
    keras_class: str
    reason: str
    output_shape: Optional[tuple[Dim, ...]] = None

    operands: ClassVar[tuple[str, ...]] = ("x", "xs*")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        if self.output_shape is None:
            raise ShapeError(f"output shape of unsupported {self.keras_class} layer is unknown")
        return TensorType(shape=self.output_shape, dtype=inputs[0].dtype if inputs else "float32")
