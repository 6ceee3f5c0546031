"""Compute ops with weights or windows: conv2d, dense, pooling."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq
from keydnn.ir.ops.elementwise import Activation, Relu
from keydnn.ir.types import Dim, TensorType

__all__ = ["Conv2d", "Dense", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Epilogue"]

#: A fused activation applied to a producer's output (set by fuse-activation).
Epilogue = Annotated[Union[Relu, Activation], Field(discriminator="kind")]

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]  # top, bottom, left, right


def _positive(values: tuple[int, ...], what: str) -> tuple[int, ...]:
    if any(v < 1 for v in values):
        raise ValueError(f"{what} must be >= 1, got {list(values)}")
    return values


def _window_out(size: Dim, k: int, stride: int, dilation: int, before: int, after: int) -> Dim:
    if isinstance(size, str):
        return size
    span = dilation * (k - 1) + 1
    padded = size + before + after
    if padded < span:
        raise ShapeError(f"window of extent {span} does not fit in padded size {padded}")
    return (padded - span) // stride + 1


def _spatial(x: TensorType, layout: str) -> tuple[Dim, Dim, Dim, Dim]:
    """(N, C, H, W) of a 4-D activation in the given layout."""
    if x.rank != 4:
        raise ShapeError(f"expected a 4-D {layout} tensor, got {x}")
    if layout == "NCHW":
        n, c, h, w = x.shape
    else:
        n, h, w, c = x.shape
    return n, c, h, w


def _assemble(n: Dim, c: Dim, h: Dim, w: Dim, layout: str, like: TensorType) -> TensorType:
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    return TensorType(shape=shape, dtype=like.dtype, layout=layout)


class Conv2d(OpBase):
    """2-D convolution (cross-correlation); weight is (O, I/groups, KH, KW)."""

    kind: Literal["conv2d"] = "conv2d"
    accepts_epilogue: ClassVar[bool] = True
    strides: Pair = (1, 1)
    dilations: Pair = (1, 1)
    pads: Pads = (0, 0, 0, 0)
    groups: int = 1
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    activation: Optional[Epilogue] = None

    operands: ClassVar[tuple[str, ...]] = ("x", "weight", "bias?")
    constant_operands: ClassVar[tuple[str, ...]] = ("weight", "bias")

    @field_validator("strides", "dilations")
    @classmethod
    def _strides_ok(cls, v: Pair) -> Pair:
        return _positive(v, "strides and dilations")  # type: ignore[return-value]

    @field_validator("pads")
    @classmethod
    def _pads_ok(cls, v: Pads) -> Pads:
        if any(p < 0 for p in v):
            raise ValueError(f"pads must be >= 0, got {list(v)}")
        return v

    @field_validator("groups")
    @classmethod
    def _groups_ok(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"groups must be >= 1, got {v}")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x, w = inputs[0], inputs[1]
        n, c, h, wd = _spatial(x, self.layout)
        if w.rank != 4:
            raise ShapeError(f"conv2d weight must be 4-D (O, I/groups, KH, KW), got {w}")
        o, i, kh, kw = w.shape
        if not dim_eq(c, i * self.groups if isinstance(i, int) else i):
            raise ShapeError(f"input has {c} channels but weight expects {i} x {self.groups} groups")
        if isinstance(o, int) and o % self.groups:
            raise ShapeError(f"{o} output channels are not divisible by groups={self.groups}")
        if len(inputs) > 2 and inputs[2].shape != (o,):
            raise ShapeError(f"bias must have shape ({o},), got {inputs[2]}")
        pt, pb, pl, pr = self.pads
        oh = _window_out(h, int(kh), self.strides[0], self.dilations[0], pt, pb)
        ow = _window_out(wd, int(kw), self.strides[1], self.dilations[1], pl, pr)
        return _assemble(n, o, oh, ow, self.layout, x)


class _Pool2d(OpBase):
    kernel: Pair
    strides: Pair
    pads: Pads = (0, 0, 0, 0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @field_validator("kernel", "strides")
    @classmethod
    def _sizes_ok(cls, v: Pair) -> Pair:
        return _positive(v, "kernel and strides")  # type: ignore[return-value]

    @model_validator(mode="after")
    def _pads_ok(self):
        kh, kw = self.kernel
        pt, pb, pl, pr = self.pads
        if min(self.pads) < 0 or max(pt, pb) >= kh or max(pl, pr) >= kw:
            raise ValueError(f"pads {list(self.pads)} must be >= 0 and smaller than the window {list(self.kernel)}")
        return self

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, h, w = _spatial(inputs[0], self.layout)
        pt, pb, pl, pr = self.pads
        oh = _window_out(h, self.kernel[0], self.strides[0], 1, pt, pb)
        ow = _window_out(w, self.kernel[1], self.strides[1], 1, pl, pr)
        return _assemble(n, c, oh, ow, self.layout, inputs[0])


class MaxPool2d(_Pool2d):
    """Max pooling; padded positions never win (they act as -inf)."""

    kind: Literal["max_pool2d"] = "max_pool2d"


class AvgPool2d(_Pool2d):
    """Average pooling; padded positions are excluded from the count (Keras 'same')."""

    kind: Literal["avg_pool2d"] = "avg_pool2d"


class GlobalAvgPool2d(OpBase):
    """Mean over the spatial axes; ``keepdims`` keeps them as size 1."""

    kind: Literal["global_avg_pool2d"] = "global_avg_pool2d"
    keepdims: bool = False
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, _, _ = _spatial(inputs[0], self.layout)
        if self.keepdims:
            return _assemble(n, c, 1, 1, self.layout, inputs[0])
        return TensorType(shape=(n, c), dtype=inputs[0].dtype, layout="NC")


class Dense(OpBase):
    """``x @ weight + bias`` over the last axis; weight is (in, out)."""

    kind: Literal["dense"] = "dense"
    accepts_epilogue: ClassVar[bool] = True
    activation: Optional[Epilogue] = None

    operands: ClassVar[tuple[str, ...]] = ("x", "weight", "bias?")
    constant_operands: ClassVar[tuple[str, ...]] = ("weight", "bias")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x, w = inputs[0], inputs[1]
        if x.rank < 2:
            raise ShapeError(f"dense input must have rank >= 2, got {x}")
        if w.rank != 2:
            raise ShapeError(f"dense weight must be 2-D (in, out), got {w}")
        if not dim_eq(x.shape[-1], w.shape[0]):
            raise ShapeError(f"dense input has {x.shape[-1]} features but weight expects {w.shape[0]}")
        if len(inputs) > 2 and inputs[2].shape != (w.shape[1],):
            raise ShapeError(f"bias must have shape ({w.shape[1]},), got {inputs[2]}")
        layout = "NC" if x.rank == 2 else "ANY"
        return TensorType(shape=x.shape[:-1] + (w.shape[1],), dtype=x.dtype, layout=layout)
