"""Spatial resampling ops of issue 18: ``dilate_pad2d`` (the input side of a transposed convolution) and
``resize2d`` (bilinear / bicubic / nearest / area-free interpolation for UpSampling2D and Resizing).

A transposed convolution is a plain ``conv2d`` (flipped kernel, stride 1) over
its input with ``factors - 1`` zeros inserted between pixels and a border of
zeros: ``dilate_pad2d`` builds that tensor, so the optimized convolution
kernels and the layout pass serve transposed convolutions unchanged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from keydnn.ir.ops.base import OpBase, ShapeError
from keydnn.ir.ops.nn import Pads, Pair, _assemble, _positive, _spatial
from keydnn.ir.types import Dim, TensorType

__all__ = ["DilatePad2d", "Resize2d"]


class DilatePad2d(OpBase):
    """Zero-stuffing plus zero padding of H and W: input pixel (i, j) lands at
    (top + i * factors[0], left + j * factors[1]); every other output pixel is 0.

    Output: H' = (H - 1) * fh + 1 + top + bottom (likewise W); N and C keep.
    """

    kind: Literal["dilate_pad2d"] = "dilate_pad2d"
    factors: Pair = (1, 1)
    pads: Pads = (0, 0, 0, 0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @field_validator("factors")
    @classmethod
    def _factors_ok(cls, v: Pair) -> Pair:
        return _positive(v, "factors")

    @field_validator("pads")
    @classmethod
    def _pads_ok(cls, v: Pads) -> Pads:
        if any(p < 0 for p in v):
            raise ValueError(f"pads must be >= 0, got {list(v)}")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, h, w = _spatial(inputs[0], self.layout)
        top, bottom, left, right = self.pads
        oh: Dim = (h - 1) * self.factors[0] + 1 + top + bottom if isinstance(h, int) else h
        ow: Dim = (w - 1) * self.factors[1] + 1 + left + right if isinstance(w, int) else w
        return _assemble(n, c, oh, ow, self.layout, inputs[0])


class Resize2d(OpBase):
    """Resample H x W to ``size`` by ``method``.

    ``nearest``: source index floor(dst * in / out) (``half_pixel`` False, Keras's UpSampling2D /
    TF's legacy nearest) or the half-pixel rule round-half-down of (dst + 0.5) * in / out - 0.5 (TF2
    ``tf.image.resize``). ``bilinear`` / ``bicubic`` (Keys a = -0.5, TF2's kernel): half-pixel centers,
    edges clamped; ``antialias`` is refused upstream (no downscaling filter).
    """

    kind: Literal["resize2d"] = "resize2d"
    size: Pair
    method: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    half_pixel: bool = True
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @field_validator("size")
    @classmethod
    def _size_ok(cls, v: Pair) -> Pair:
        return _positive(v, "size")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        n, c, h, w = _spatial(inputs[0], self.layout)
        if not (isinstance(h, int) and isinstance(w, int)):
            raise ShapeError(f"resize2d needs static spatial dims, got {inputs[0]}")
        return _assemble(n, c, self.size[0], self.size[1], self.layout, inputs[0])


def _keys_cubic(d: float, a: float = -0.5) -> float:
    d = abs(d)
    if d <= 1.0:
        return ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    if d < 2.0:
        return ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return 0.0


def resize_taps(in_size: int, out_size: int, method: str, half_pixel: bool = True):
    """Per output index along one axis: 4 source indices and weights (TensorFlow 2's resize rules).

    nearest: one tap; bilinear: two, edges clamped; bicubic: Keys (a = -0.5) at the fraction rounded to 1/1024
    (TensorFlow's weight table), taps outside the axis dropped and the rest renormalized (TensorFlow's
    ``ResizeBicubic`` with half-pixel centers).
    """
    import math

    import numpy as np

    idx = np.zeros((out_size, 4), dtype=np.int64)
    wt = np.zeros((out_size, 4), dtype=np.float64)
    scale = in_size / out_size
    for o in range(out_size):
        if method == "nearest":
            src = math.floor((o + 0.5) * scale) if half_pixel else math.floor(o * scale)
            idx[o, 0], wt[o, 0] = min(max(src, 0), in_size - 1), 1.0
            continue
        f = (o + 0.5) * scale - 0.5 if half_pixel else o * scale
        base = math.floor(f)
        delta = f - base
        if method == "bilinear":
            lo, hi = max(base, 0), min(base + 1, in_size - 1)
            lo = min(lo, in_size - 1)
            idx[o, :2], wt[o, :2] = (lo, hi), (1.0 - delta, delta)
            continue
        delta = round(delta * 1024) / 1024  # TensorFlow reads the Keys weights off a 1024-entry table
        taps = [base - 1, base, base + 1, base + 2]
        ws = [_keys_cubic(1.0 + delta), _keys_cubic(delta), _keys_cubic(1.0 - delta), _keys_cubic(2.0 - delta)]
        ws = [w if 0 <= t < in_size else 0.0 for t, w in zip(taps, ws)]
        total = sum(ws)
        ws = [w / total for w in ws] if abs(total) >= 1000.0 * np.finfo(np.float32).tiny else ws
        idx[o] = [min(max(t, 0), in_size - 1) for t in taps]
        wt[o] = ws
    return idx, wt
