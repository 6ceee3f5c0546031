"""Image preprocessing layers at inference: Resizing, CenterCrop, and the random augmentation layers
(identities at inference, as in Keras, even though Keras 3 records ``training: True`` in their saved calls).
"""

from __future__ import annotations

import numpy as np

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_common import data_format, is_int, is_number, require_rank, spatial_sizes
from keydnn.frontends.keras.wiring import TENSOR_KWARGS
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Crop2d, Pad2d, Resize2d

__all__ = ["RANDOM_IDENTITIES"]

#: Augmentation layers whose inference call returns its input unchanged (checked against Keras in the tests).
RANDOM_IDENTITIES: tuple[str, ...] = (
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast", "RandomBrightness",
    "RandomHeight", "RandomWidth", "RandomGrayscale", "RandomHue", "RandomSaturation", "RandomSharpness",
    "RandomShear", "RandomColorJitter", "RandomColorDegeneration", "RandomPosterization", "RandomInvert",
    "RandomErasing", "RandomGaussianBlur", "RandomPerspective", "RandomElasticTransform", "RandAugment", "AugMix",
    "CutMix", "MixUp",
)
TENSOR_KWARGS.update({name: () for name in RANDOM_IDENTITIES + ("RandomCrop",)})


def _training_kwarg(ctx: LayerContext) -> None:
    for key, value in ctx.call_kwargs.items():  # type: ignore[attr-defined]
        if key != "training" or value not in (None, True, False):
            ctx.refuse(f"unsupported call argument {key}={value!r}", field=key, value=value,
                       supported="training (any value: the layer is the identity at inference)")
            raise Unconvertible


def _random_identity(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    if getattr(ctx, "call_kwargs", None):
        _training_kwarg(ctx)
    # Every other field (factor, mode, fill_mode, interpolation, value_range, seed, ...) drives the random
    # transform, which only runs in training.
    ctx.ignore(*ctx.layer.config)


for _name in RANDOM_IDENTITIES:
    register_converter(_name, constraints="identity at inference (no node); every option only acts in training "
                       "(Keras 3's saved training=True call argument included)")(_random_identity)


@register_converter("RandomCrop", constraints=(
    "identity when the input already has the target height and width (what Keras does at inference then); "
    "other sizes are refused"))
def convert_random_crop(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    if getattr(ctx, "call_kwargs", None):
        _training_kwarg(ctx)
    layout = data_format(ctx, 4)
    height, width = ctx.cfg("height"), ctx.cfg("width")
    ctx.ignore(*ctx.layer.config)
    x = require_rank(ctx, 4)
    if tuple(spatial_sizes(x, layout)) != (height, width):
        ctx.refuse(f"input {x} is not {height}x{width}: at inference Keras crops and resizes it", field="height",
                   value=height, supported="inputs of the target size (identity)")
        raise Unconvertible


def _size(ctx: LayerContext) -> tuple[int, int]:
    h, w = ctx.cfg("height"), ctx.cfg("width")
    if not (is_int(h) and is_int(w) and h > 0 and w > 0):
        ctx.refuse(f"invalid height/width {h!r}/{w!r}", field="height", value=h, supported="positive ints")
        raise Unconvertible
    return int(h), int(w)


def _f32_ratio(a: int, b: int, c: int) -> int:
    """int(float32(a * b) / c), as Keras computes crop and pad boxes."""
    return int(np.float32(a * b) / np.float32(c))


@register_converter("Resizing", constraints=(
    "height, width, interpolation 'bilinear'/'nearest'/'bicubic' (TensorFlow 2's half-pixel rules), "
    "crop_to_aspect_ratio, pad_to_aspect_ratio with fill_mode 'constant' and fill_value, antialias false; "
    "both data formats"))
def convert_resizing(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 4)
    th, tw = _size(ctx)
    method = ctx.check_in("interpolation", ("bilinear", "nearest", "bicubic"), "bilinear",
                          supported="'bilinear', 'nearest', 'bicubic' (area, lanczos, gaussian, mitchellcubic are "
                          "refused)")
    crop = ctx.check_in("crop_to_aspect_ratio", (False, True), False)
    pad = ctx.check_in("pad_to_aspect_ratio", (False, True), False)
    ctx.check_in("antialias", (False,), False)
    ctx.check_in("fill_mode", ("constant",), "constant")
    fill = ctx.cfg("fill_value", 0.0)
    if not is_number(fill):
        ctx.refuse(f"invalid fill_value {fill!r}", field="fill_value", value=fill, supported="a number")
        raise Unconvertible
    if crop and pad:
        ctx.refuse("crop_to_aspect_ratio and pad_to_aspect_ratio both set", field="pad_to_aspect_ratio")
        raise Unconvertible
    x = require_rank(ctx, 4)
    h, w = spatial_sizes(x, layout)
    if not (is_int(h) and is_int(w)):
        ctx.refuse(f"needs static spatial dimensions, got {x}")
        raise Unconvertible
    if crop:
        ch = max(min(h, _f32_ratio(w, th, tw)), 1)
        cw = max(min(w, _f32_ratio(h, tw, th)), 1)
        top, left = int(np.float32(h - ch) / 2), int(np.float32(w - cw) / 2)
        if (ch, cw) != (h, w):
            ctx.emit(Crop2d(crops=(top, h - ch - top, left, w - cw - left), layout=layout), suffix="crop")
            h, w = ch, cw
    elif pad:
        ph, pw = max(h, _f32_ratio(w, th, tw)), max(w, _f32_ratio(h, tw, th))
        top, left = int(np.float32(ph - h) / 2), int(np.float32(pw - w) / 2)
        if top or left:
            ctx.emit(Pad2d(pads=(top, top, left, left), value=float(fill), layout=layout), suffix="pad")
            h, w = h + 2 * top, w + 2 * left
    if (h, w) == (th, tw) and method != "bicubic":
        return  # same size: every rule reads each pixel once with weight 1
    ctx.emit(Resize2d(size=(th, tw), method=method, layout=layout))


@register_converter("CenterCrop", constraints=(
    "height, width no larger than the input (offset (input - target) // 2, as Keras); smaller inputs, which "
    "Keras resizes first, are refused; both data formats"))
def convert_center_crop(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 4)
    th, tw = _size(ctx)
    x = require_rank(ctx, 4)
    h, w = spatial_sizes(x, layout)
    if not (is_int(h) and is_int(w) and h >= th and w >= tw):
        ctx.refuse(f"input {x} is smaller than the crop {th}x{tw} (Keras resizes it first)", field="height",
                   value=th, supported="crops no larger than the static input")
        raise Unconvertible
    top, left = (h - th) // 2, (w - tw) // 2
    if (h, w) != (th, tw):
        ctx.emit(Crop2d(crops=(top, h - th - top, left, w - tw - left), layout=layout))
