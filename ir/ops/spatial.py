"""Weightless spatial ops on 4-D images: pad2d, crop2d, upsample2d, global_max_pool2d.

Each carries a ``layout`` ("NCHW" or "NHWC") that says where H, W and C sit;
``canonicalize-layout`` rewrites "NHWC" ones to "NCHW" (their attributes are
given per spatial axis, so they stay the same). 1-D layers (ZeroPadding1D,
Cropping1D, UpSampling1D, GlobalMaxPooling1D) lower to these ops between an
``expand_dims`` and a ``squeeze`` (see ``keydnn.ir.ops.shape``), with the
size-1 H axis left untouched (pads/crops 0, factor 1 on it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from keydnn.ir.ops.base import OpBase, ShapeError
from keydnn.ir.ops.nn import Pads, Pair, _assemble, _positive, _spatial
from keydnn.ir.ops.windows import non_negative as _non_negative
from keydnn.ir.types import Dim, TensorType

__all__ = ["Pad2d", "Crop2d", "Upsample2d", "GlobalMaxPool2d"]


class Pad2d(OpBase):
    """Constant padding of H and W (Keras ZeroPadding2D).

    ``pads`` is (top, bottom, left, right) in elements; the new border is filled
    with ``value``. Output: H + top + bottom, W + left + right; N and C keep.
    """

    kind: Literal["pad2d"] = "pad2d"
    pads: Pads = (0, 0, 0, 0)
    value: float = 0.0
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @field_validator("pads")
    @classmethod
    def _pads_ok(cls, v: Pads) -> Pads:
        return _non_negative(v, "pads")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, h, w = _spatial(inputs[0], self.layout)
        top, bottom, left, right = self.pads
        oh: Dim = h + top + bottom if isinstance(h, int) else h
        ow: Dim = w + left + right if isinstance(w, int) else w
        return _assemble(n, c, oh, ow, self.layout, inputs[0])


class Crop2d(OpBase):
    """Remove borders of H and W (Keras Cropping2D).

    ``crops`` is (top, bottom, left, right): output row ``i`` is input row
    ``i + top``; H - top - bottom and W - left - right must stay >= 1.
    """

    kind: Literal["crop2d"] = "crop2d"
    crops: Pads = (0, 0, 0, 0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @field_validator("crops")
    @classmethod
    def _crops_ok(cls, v: Pads) -> Pads:
        return _non_negative(v, "crops")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, h, w = _spatial(inputs[0], self.layout)
        top, bottom, left, right = self.crops
        oh, ow = h, w
        if isinstance(h, int):
            oh = h - top - bottom
        if isinstance(w, int):
            ow = w - left - right
        if (isinstance(oh, int) and oh < 1) or (isinstance(ow, int) and ow < 1):
            raise ShapeError(f"crops {list(self.crops)} leave nothing of {inputs[0]}")
        return _assemble(n, c, oh, ow, self.layout, inputs[0])


class Upsample2d(OpBase):
    """Repeat every pixel ``factors`` = (fh, fw) times (Keras UpSampling2D).

    ``mode`` "nearest" is the only interpolation: output[i, j] =
    input[i // fh, j // fw]; output H*fh, W*fw.
    """

    kind: Literal["upsample2d"] = "upsample2d"
    factors: Pair = (2, 2)
    mode: Literal["nearest"] = "nearest"
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @field_validator("factors")
    @classmethod
    def _factors_ok(cls, v: Pair) -> Pair:
        return _positive(v, "factors")  # type: ignore[return-value]

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, h, w = _spatial(inputs[0], self.layout)
        oh: Dim = h * self.factors[0] if isinstance(h, int) else h
        ow: Dim = w * self.factors[1] if isinstance(w, int) else w
        return _assemble(n, c, oh, ow, self.layout, inputs[0])


class GlobalMaxPool2d(OpBase):
    """Maximum over H and W; ``keepdims`` keeps them as size 1, else the result is (N, C) "NC"."""

    kind: Literal["global_max_pool2d"] = "global_max_pool2d"
    keepdims: bool = False
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, _, _ = _spatial(inputs[0], self.layout)
        if self.keepdims:
            return _assemble(n, c, 1, 1, self.layout, inputs[0])
        return TensorType(shape=(n, c), dtype=inputs[0].dtype, layout="NC")
