"""Compute ops with weights or windows: conv2d, dense, pooling."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Optional, Union

from pydantic import Field

from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq
from keydnn.ir.ops.windows import ConvAttrs, PoolAttrs, positive, window_out
from keydnn.ir.ops.elementwise import Activation, Relu
from keydnn.ir.types import Dim, TensorType

__all__ = ["Conv2d", "Dense", "MaxPool2d", "AvgPool2d", "GlobalAvgPool2d", "Epilogue"]

#: A fused activation applied to a producer's output (set by fuse-activation).
Epilogue = Annotated[Union[Relu, Activation], Field(discriminator="kind")]

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]  # top, bottom, left, right


#: Re-exported for the ops that import them from here (``resize``, ``spatial``).
_positive = positive
_window_out = window_out


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


class Conv2d(ConvAttrs):
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

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, h, wd = _spatial(inputs[0], self.layout)
        o, (oh, ow) = self.conv_out(c, (h, wd), inputs, "(O, I/groups, KH, KW)")
        return _assemble(n, o, oh, ow, self.layout, inputs[0])


class _Pool2d(PoolAttrs):
    kernel: Pair
    strides: Pair
    pads: Pads = (0, 0, 0, 0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, h, w = _spatial(inputs[0], self.layout)
        oh, ow = self.pool_out((h, w))
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
