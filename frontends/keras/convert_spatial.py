"""Weightless spatial layers in 2-D and 1-D: pooling, global pooling, zero padding, cropping, upsampling."""

from __future__ import annotations

from typing import Any, Callable

from keydnn.frontends.keras.convert_core import check_dtype_policy, pair
from keydnn.frontends.keras.convert_common import (
    data_format, emit_spatial, expand_1d, is_int, padding_amounts, pads_1d, positive_int, require_rank, spatial_pads, spatial_sizes,
    squeeze_1d,
)
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import AvgPool2d, Crop2d, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d, Pad2d, Upsample2d

__all__: list[str] = []

_BOTH = "both data formats"


def _amounts2d(ctx: LayerContext, key: str, value: Any) -> tuple[int, ...]:
    return padding_amounts(ctx, key, value, 2)


# -- 2-D ----------------------------------------------------------------------------
@register_converter("AveragePooling2D", constraints=(
    "any pool_size, strides, padding 'valid'/'same' (padding excluded from the average, as TensorFlow); " + _BOTH))
def convert_avg_pool2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 4)
    kernel = pair(ctx, "pool_size", ctx.cfg("pool_size", 2))
    strides_cfg = ctx.cfg("strides")
    strides = kernel if strides_cfg is None else pair(ctx, "strides", strides_cfg)
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    sizes = spatial_sizes(require_rank(ctx, 4), layout)
    pads = spatial_pads(ctx, padding, sizes, kernel, strides, (1, 1))
    ctx.emit(AvgPool2d(kernel=kernel, strides=strides, pads=pads, layout=layout))


@register_converter("GlobalMaxPooling2D", constraints="keepdims true/false; " + _BOTH)
def convert_global_max_pool2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 4)
    keepdims = ctx.check_in("keepdims", (False, True), False)
    require_rank(ctx, 4)
    ctx.emit(GlobalMaxPool2d(keepdims=bool(keepdims), layout=layout))


@register_converter("ZeroPadding2D", constraints=(
    "padding n, (rows, cols) or ((top, bottom), (left, right)); " + _BOTH))
def convert_zero_padding2d(ctx: LayerContext) -> None:
    emit_spatial(ctx, 4, "padding", 1, _amounts2d, lambda pads, layout: Pad2d(pads=pads, layout=layout))


@register_converter("Cropping2D", constraints=(
    "cropping n, (rows, cols) or ((top, bottom), (left, right)); " + _BOTH))
def convert_cropping2d(ctx: LayerContext) -> None:
    emit_spatial(ctx, 4, "cropping", 0, _amounts2d, lambda crops, layout: Crop2d(crops=crops, layout=layout))


@register_converter("UpSampling2D", constraints=(
    "size (int or pair), interpolation 'nearest' (repeat), 'bilinear' and 'bicubic' (TensorFlow 2's "
    "half-pixel resize, a resize2d node); lanczos and area are refused; " + _BOTH))
def convert_upsampling2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 4)
    size = pair(ctx, "size", ctx.cfg("size", 2))
    method = ctx.check_in("interpolation", ("nearest", "bilinear", "bicubic"), "nearest",
                          supported="'nearest', 'bilinear', 'bicubic'")
    x = require_rank(ctx, 4)
    if method == "nearest":
        ctx.emit(Upsample2d(factors=size, layout=layout))
        return
    from keydnn.ir.ops import Resize2d

    h, w = spatial_sizes(x, layout)
    if not (isinstance(h, int) and isinstance(w, int)):
        ctx.refuse(f"interpolation {method!r} needs static spatial dimensions, got {x}", field="interpolation")
        raise Unconvertible
    ctx.emit(Resize2d(size=(h * size[0], w * size[1]), method=method, layout=layout))


# -- 1-D: the 2-D op on a size-1 H axis -------------------------------------------------
def _pool1d(ctx: LayerContext, make: Callable[..., Any]) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 3)
    k = positive_int(ctx, "pool_size", ctx.cfg("pool_size", 2))
    strides_cfg = ctx.cfg("strides")
    stride = k if strides_cfg is None or strides_cfg == [None] else positive_int(ctx, "strides", strides_cfg)
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    left, right = pads_1d(ctx, spatial_sizes(require_rank(ctx, 3), layout)[0], padding, k, stride, 1)
    layout_2d = expand_1d(ctx, layout)
    ctx.emit(make(kernel=(1, k), strides=(1, stride), pads=(0, 0, left, right), layout=layout_2d), suffix="pool2d")
    squeeze_1d(ctx, layout)


@register_converter("MaxPooling1D", constraints="any pool_size, strides, padding 'valid'/'same'; " + _BOTH)
def convert_max_pool1d(ctx: LayerContext) -> None:
    _pool1d(ctx, MaxPool2d)


@register_converter("AveragePooling1D", constraints=(
    "any pool_size, strides, padding 'valid'/'same' (padding excluded from the average); " + _BOTH))
def convert_avg_pool1d(ctx: LayerContext) -> None:
    _pool1d(ctx, AvgPool2d)


def _global1d(ctx: LayerContext, make: Callable[..., Any]) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 3)
    keepdims = ctx.check_in("keepdims", (False, True), False)
    require_rank(ctx, 3)
    layout_2d = expand_1d(ctx, layout)
    if keepdims:
        ctx.emit(make(keepdims=True, layout=layout_2d), suffix="pool2d")
        squeeze_1d(ctx, layout)
    else:
        ctx.emit(make(keepdims=False, layout=layout_2d))


@register_converter("GlobalAveragePooling1D", constraints="keepdims true/false; " + _BOTH)
def convert_global_avg_pool1d(ctx: LayerContext) -> None:
    _global1d(ctx, GlobalAvgPool2d)


@register_converter("GlobalMaxPooling1D", constraints="keepdims true/false; " + _BOTH)
def convert_global_max_pool1d(ctx: LayerContext) -> None:
    _global1d(ctx, GlobalMaxPool2d)


def _pair_1d(ctx: LayerContext, key: str, value: Any) -> tuple[int, int]:
    if is_int(value) and value >= 0:
        return int(value), int(value)
    if isinstance(value, list) and len(value) == 2 and all(is_int(v) and v >= 0 for v in value):
        return int(value[0]), int(value[1])
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported="an int >= 0 or a pair (start, end)")
    raise Unconvertible


@register_converter("ZeroPadding1D", constraints="padding n or (left, right); both data formats (Keras 3)")
def convert_zero_padding1d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 3)
    left, right = _pair_1d(ctx, "padding", ctx.cfg("padding", 1))
    require_rank(ctx, 3)
    layout_2d = expand_1d(ctx, layout)
    ctx.emit(Pad2d(pads=(0, 0, left, right), layout=layout_2d), suffix="pad2d")  # type: ignore[arg-type]
    squeeze_1d(ctx, layout)


@register_converter("Cropping1D", constraints=(
    "cropping n or (start, end) of the steps axis (Keras has no data_format here)"))
def convert_cropping1d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 3)
    start, end = _pair_1d(ctx, "cropping", ctx.cfg("cropping", 1))
    require_rank(ctx, 3)
    layout_2d = expand_1d(ctx, layout)
    ctx.emit(Crop2d(crops=(0, 0, start, end), layout=layout_2d), suffix="crop2d")  # type: ignore[arg-type]
    squeeze_1d(ctx, layout)


@register_converter("UpSampling1D", constraints="size (repeats every step; Keras has no data_format here)")
def convert_upsampling1d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 3)
    size = positive_int(ctx, "size", ctx.cfg("size", 2))
    require_rank(ctx, 3)
    layout_2d = expand_1d(ctx, layout)
    ctx.emit(Upsample2d(factors=(1, size), layout=layout_2d), suffix="upsample2d")  # type: ignore[arg-type]
    squeeze_1d(ctx, layout)
