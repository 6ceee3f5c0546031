"""Ops on 5-D volumes (issue 18, item 5): conv3d, max_pool3d, avg_pool3d, pad3d, crop3d, upsample3d.

Each carries a ``layout`` ("NCDHW" or "NDHWC") saying where D, H, W and C
sit; ``canonicalize-layout`` rewrites "NDHWC" ones to "NCDHW" (attributes are
per spatial axis, so they stay). Attribute tuples run over (D, H, W); pads
and crops are (front, back, top, bottom, left, right).

The global 3-D pools are ``reduce`` ops over the three spatial axes, and a
transposed 3-D convolution is ``pad3d`` (zero-stuffing by ``factors`` plus a
zero border) followed by a stride-1 ``conv3d``, exactly as the 2-D one is
``dilate_pad2d`` + ``conv2d``. The backends run the windowed and
data-movement ops separably, as two passes of their 2-D kernels (H-W planes,
then D across planes of H*W): max, average (padding never counted) and
nearest repeat all factor per axis, so each algorithm keeps one
implementation.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import field_validator

from keydnn.ir.ops.base import OpBase, ShapeError
from keydnn.ir.ops.nn import Epilogue
from keydnn.ir.ops.windows import ConvAttrs, PoolAttrs, non_negative, positive
from keydnn.ir.types import Dim, TensorType

__all__ = ["Conv3d", "MaxPool3d", "AvgPool3d", "Pad3d", "Crop3d", "Upsample3d", "Triple", "Pads3", "volume", "assemble"]

Triple = tuple[int, int, int]
Pads3 = tuple[int, int, int, int, int, int]  # front, back, top, bottom, left, right
Layout3 = Literal["NCDHW", "NDHWC"]


def volume(x: TensorType, layout: str) -> tuple[Dim, Dim, tuple[Dim, Dim, Dim]]:
    """(N, C, (D, H, W)) of a 5-D activation in ``layout``."""
    if x.rank != 5:
        raise ShapeError(f"expected a 5-D {layout} tensor, got {x}")
    if layout == "NCDHW":
        n, c, d, h, w = x.shape
    else:
        n, d, h, w, c = x.shape
    return n, c, (d, h, w)


def assemble(n: Dim, c: Dim, sizes: tuple[Dim, ...], layout: str, like: TensorType) -> TensorType:
    shape = (n, c, *sizes) if layout == "NCDHW" else (n, *sizes, c)
    return TensorType(shape=shape, dtype=like.dtype, layout=layout)


class Conv3d(ConvAttrs):
    """3-D convolution (cross-correlation); weight is (O, I/groups, KD, KH, KW)."""

    kind: Literal["conv3d"] = "conv3d"
    accepts_epilogue: ClassVar[bool] = True
    strides: Triple = (1, 1, 1)
    dilations: Triple = (1, 1, 1)
    pads: Pads3 = (0, 0, 0, 0, 0, 0)
    groups: int = 1
    layout: Layout3 = "NCDHW"
    activation: Optional[Epilogue] = None

    operands: ClassVar[tuple[str, ...]] = ("x", "weight", "bias?")
    constant_operands: ClassVar[tuple[str, ...]] = ("weight", "bias")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, sizes = volume(inputs[0], self.layout)
        o, out = self.conv_out(c, sizes, inputs, "(O, I/groups, KD, KH, KW)")
        return assemble(n, o, out, self.layout, inputs[0])


class _Pool3d(PoolAttrs):
    kernel: Triple
    strides: Triple
    pads: Pads3 = (0, 0, 0, 0, 0, 0)
    layout: Layout3 = "NCDHW"

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, sizes = volume(inputs[0], self.layout)
        return assemble(n, c, self.pool_out(sizes), self.layout, inputs[0])


class MaxPool3d(_Pool3d):
    """Max pooling over D, H, W; padded positions never win (they act as -inf)."""

    kind: Literal["max_pool3d"] = "max_pool3d"


class AvgPool3d(_Pool3d):
    """Average pooling over D, H, W; padded positions are excluded from the count (Keras 'same')."""

    kind: Literal["avg_pool3d"] = "avg_pool3d"


class Pad3d(OpBase):
    """Zero-stuffing plus zero padding of D, H and W (ZeroPadding3D; the input side of Conv3DTranspose).

    Input voxel (d, h, w) lands at (front + d * fd, top + h * fh, left + w * fw); every other output
    voxel is 0. Output per axis: (S - 1) * f + 1 + before + after; N and C keep. ``factors`` (1, 1, 1)
    is plain zero padding.
    """

    kind: Literal["pad3d"] = "pad3d"
    factors: Triple = (1, 1, 1)
    pads: Pads3 = (0, 0, 0, 0, 0, 0)
    layout: Layout3 = "NCDHW"

    @field_validator("factors")
    @classmethod
    def _factors_ok(cls, v: Triple) -> Triple:
        return positive(v, "factors")  # type: ignore[return-value]

    @field_validator("pads")
    @classmethod
    def _pads_ok(cls, v: Pads3) -> Pads3:
        return non_negative(v, "pads")  # type: ignore[return-value]

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, sizes = volume(inputs[0], self.layout)
        out = tuple((s - 1) * f + 1 + self.pads[2 * a] + self.pads[2 * a + 1] if isinstance(s, int) else s
                    for a, (s, f) in enumerate(zip(sizes, self.factors)))
        return assemble(n, c, out, self.layout, inputs[0])


class Crop3d(OpBase):
    """Remove borders of D, H and W (Cropping3D): output voxel (d, h, w) is input (d + front, h + top,
    w + left); every axis must keep at least one voxel."""

    kind: Literal["crop3d"] = "crop3d"
    crops: Pads3 = (0, 0, 0, 0, 0, 0)
    layout: Layout3 = "NCDHW"

    @field_validator("crops")
    @classmethod
    def _crops_ok(cls, v: Pads3) -> Pads3:
        return non_negative(v, "crops")  # type: ignore[return-value]

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, sizes = volume(inputs[0], self.layout)
        out = tuple(s - self.crops[2 * a] - self.crops[2 * a + 1] if isinstance(s, int) else s
                    for a, s in enumerate(sizes))
        if any(isinstance(s, int) and s < 1 for s in out):
            raise ShapeError(f"crops {list(self.crops)} leave nothing of {inputs[0]}")
        return assemble(n, c, out, self.layout, inputs[0])


class Upsample3d(OpBase):
    """Repeat every voxel ``factors`` = (fd, fh, fw) times (UpSampling3D): output[d, h, w] =
    input[d // fd, h // fh, w // fw]."""

    kind: Literal["upsample3d"] = "upsample3d"
    factors: Triple = (2, 2, 2)
    layout: Layout3 = "NCDHW"

    @field_validator("factors")
    @classmethod
    def _factors_ok(cls, v: Triple) -> Triple:
        return positive(v, "factors")  # type: ignore[return-value]

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, sizes = volume(inputs[0], self.layout)
        out = tuple(s * f if isinstance(s, int) else s for s, f in zip(sizes, self.factors))
        return assemble(n, c, out, self.layout, inputs[0])
