"""The 3-D layers of issue 18 (item 5, and Conv3DTranspose of item 4) onto the volume ops.

Conv3D -> ``conv3d``; Conv3DTranspose -> ``pad3d`` (zero-stuffing by the
strides plus Keras's transposed-conv border, ``convert_transposed.transpose_pads``)
+ a stride-1 ``conv3d`` with the flipped kernel; MaxPooling3D /
AveragePooling3D -> ``max_pool3d`` / ``avg_pool3d``; GlobalMax/AveragePooling3D
-> ``reduce`` (max / mean) over the three spatial axes; ZeroPadding3D ->
``pad3d``; Cropping3D -> ``crop3d``; UpSampling3D -> ``upsample3d``. Every
config field is read here and either honoured or refused by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keydnn.frontends.keras.activations import emit_fused_activation
from keydnn.frontends.keras.convert_common import (
    channels, data_format, emit_spatial, padding_amounts, require_rank, spatial_pads, spatial_sizes,
)
from keydnn.frontends.keras.convert_core import check_dtype_policy, positive_ints
from keydnn.frontends.keras.convert_transposed import _output_padding, transpose_pads
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.frontends.keras.values import is_int
from keydnn.ir.ops import AvgPool3d, Conv3d, Crop3d, MaxPool3d, Pad3d, Reduce, Upsample3d
from keydnn.ir.types import TensorType

__all__ = ["triple", "pads3d"]

_ACT = "fused activation 'linear' (others with allow_non_linear_activation)"


def triple(ctx: LayerContext, key: str, value: Any) -> tuple[int, int, int]:
    """An int or a 3-sequence of positive ints (sizes, strides, dilation rates of 3-D layers)."""
    return positive_ints(ctx, key, value, 3)  # type: ignore[return-value]


def pads3d(ctx: LayerContext, key: str, value: Any) -> tuple[int, int, int, int, int, int]:
    """ZeroPadding3D / Cropping3D amounts: ``n``, ``(d, h, w)`` or ``((front, back), (top, bottom), (left, right))``."""
    return padding_amounts(ctx, key, value, 3)  # type: ignore[return-value]


def _window_pads(ctx: LayerContext, padding: str, x: TensorType, layout: str, kernel: tuple, strides: tuple,
                 dilations: tuple) -> tuple[int, int, int, int, int, int]:
    return spatial_pads(ctx, padding, spatial_sizes(x, layout), kernel, strides, dilations)  # type: ignore[return-value]


@register_converter("Conv3D", constraints=(
    "padding 'valid'/'same' (asymmetric 'same' exactly as TensorFlow), any strides, dilation_rate, groups, "
    "use_bias; both data formats; " + _ACT))
def convert_conv3d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 5)
    kernel = triple(ctx, "kernel_size", ctx.cfg("kernel_size"))
    strides = triple(ctx, "strides", ctx.cfg("strides", 1))
    dilations = triple(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    groups = ctx.cfg("groups", 1)
    if not (is_int(groups) and groups >= 1):
        ctx.refuse(f"invalid groups {groups!r}", field="groups", value=groups, supported="a positive int")
        raise Unconvertible
    filters = ctx.cfg("filters")
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    use_bias = ctx.check_in("use_bias", (True, False), True)
    ctx.cfg("activation")  # lowered after the conv
    if max(strides) > 1 and max(dilations) > 1:
        ctx.refuse("strides > 1 together with dilation_rate > 1", field="dilation_rate", value=list(dilations),
                   supported="strides or dilation_rate, as Keras itself requires")
        raise Unconvertible
    x = require_rank(ctx, 5)
    cin = channels(x, layout)
    if is_int(cin) and is_int(filters) and (cin % groups or filters % groups):
        ctx.refuse(f"groups={groups} does not divide the {cin} input channels and {filters} filters", field="groups",
                   value=groups, supported="a divisor of both the input channels and filters")
        raise Unconvertible
    pads = _window_pads(ctx, padding, x, layout, kernel, strides, dilations)
    w = ctx.weight("kernel")  # (kd, kh, kw, in/groups, out)
    if w.ndim != 5 or tuple(w.shape[:3]) != kernel or w.shape[4] != filters:
        ctx.refuse(f"kernel weight has shape {list(w.shape)}, config says {list(kernel)} x {filters} filters")
        raise Unconvertible
    operands = [ctx.add_constant("kernel", np.transpose(w, (4, 3, 0, 1, 2)))]
    if use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    ctx.emit(Conv3d(strides=strides, dilations=dilations, pads=pads, groups=int(groups), layout=layout), *operands)
    emit_fused_activation(ctx)


@register_converter("Conv3DTranspose", constraints=(
    "strides, padding 'valid'/'same', output_padding, dilation_rate, use_bias; both data formats; lowered to "
    "pad3d (zero-stuffing) + a stride-1 conv3d with the flipped kernel; " + _ACT))
def convert_conv3d_transpose(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 5)
    kernel = triple(ctx, "kernel_size", ctx.cfg("kernel_size"))
    strides = triple(ctx, "strides", ctx.cfg("strides", 1))
    dilations = triple(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    out_pad = _output_padding(ctx, 3, strides, dilations)
    use_bias = ctx.check_in("use_bias", (True, False), True)
    ctx.check_in("groups", (1,), 1)  # tf_keras writes groups=1
    filters = ctx.cfg("filters")
    ctx.cfg("activation")
    x = require_rank(ctx, 5)
    cin = channels(x, layout)
    w = ctx.weight("kernel")  # (kd, kh, kw, out, in)
    if w.shape != tuple(kernel) + (filters, cin):
        ctx.refuse(f"kernel weight has shape {list(w.shape)}, expected {[*kernel, filters, cin]}")
        raise Unconvertible
    flipped = np.ascontiguousarray(np.moveaxis(w[::-1, ::-1, ::-1], (3, 4), (0, 1)))
    operands = [ctx.add_constant("kernel", flipped)]
    if use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    pads = [transpose_pads(k, s, d, padding, p) for k, s, d, p in zip(kernel, strides, dilations, out_pad)]
    ctx.emit(Pad3d(factors=strides, pads=tuple(v for p in pads for v in p), layout=layout),  # type: ignore[arg-type]
             suffix="stuff")
    ctx.emit(Conv3d(dilations=dilations, layout=layout), *operands)  # type: ignore[arg-type]
    emit_fused_activation(ctx)


def _pool(ctx: LayerContext, cls: type) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 5)
    kernel = triple(ctx, "pool_size", ctx.cfg("pool_size", 2))
    strides_cfg = ctx.cfg("strides")
    strides = kernel if strides_cfg is None else triple(ctx, "strides", strides_cfg)
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    x = require_rank(ctx, 5)
    pads = _window_pads(ctx, padding, x, layout, kernel, strides, (1, 1, 1))
    ctx.emit(cls(kernel=kernel, strides=strides, pads=pads, layout=layout))


@register_converter("MaxPooling3D", constraints="any pool_size, strides, padding 'valid'/'same'; both data formats")
def convert_max_pool3d(ctx: LayerContext) -> None:
    _pool(ctx, MaxPool3d)


@register_converter("AveragePooling3D", constraints=(
    "any pool_size, strides, padding 'valid'/'same' (padding not counted, as Keras); both data formats"))
def convert_avg_pool3d(ctx: LayerContext) -> None:
    _pool(ctx, AvgPool3d)


def _global(ctx: LayerContext, mode: str) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 5)
    keepdims = ctx.check_in("keepdims", (False, True), False)
    require_rank(ctx, 5)
    axes = (2, 3, 4) if layout == "NCDHW" else (1, 2, 3)
    ctx.emit(Reduce(mode=mode, axes=axes, keepdims=bool(keepdims)))  # type: ignore[arg-type]


@register_converter("GlobalMaxPooling3D", constraints="keepdims true/false; both data formats; a max reduce")
def convert_global_max_pool3d(ctx: LayerContext) -> None:
    _global(ctx, "max")


@register_converter("GlobalAveragePooling3D", constraints="keepdims true/false; both data formats; a mean reduce")
def convert_global_avg_pool3d(ctx: LayerContext) -> None:
    _global(ctx, "mean")


@register_converter("ZeroPadding3D", constraints="padding as an int, 3 ints or 3 pairs; both data formats")
def convert_zero_padding3d(ctx: LayerContext) -> None:
    emit_spatial(ctx, 5, "padding", 1, pads3d, lambda pads, layout: Pad3d(pads=pads, layout=layout))


@register_converter("Cropping3D", constraints="cropping as an int, 3 ints or 3 pairs; both data formats")
def convert_cropping3d(ctx: LayerContext) -> None:
    emit_spatial(ctx, 5, "cropping", 1, pads3d, lambda crops, layout: Crop3d(crops=crops, layout=layout))


@register_converter("UpSampling3D", constraints="size as an int or 3 ints (nearest repeat); both data formats")
def convert_upsampling3d(ctx: LayerContext) -> None:
    emit_spatial(ctx, 5, "size", 2, triple, lambda factors, layout: Upsample3d(factors=factors, layout=layout))


@register_converter("SpatialDropout3D", constraints=(
    "identity at inference (no node); rate, noise_shape and seed only act in training; both data formats"))
def convert_spatial_dropout3d(ctx: LayerContext) -> None:
    from keydnn.frontends.keras.convert_identity import _identity

    _identity(ctx, "rate", noise_shape=True, data_format=True)
