"""Convolutions beyond Conv2D: DepthwiseConv2D, SeparableConv2D (both grouped conv2d), Conv1D (1-D conv2d)."""

from __future__ import annotations

import numpy as np

from keydnn.frontends.keras.activations import emit_fused_activation
from keydnn.frontends.keras.convert_core import check_dtype_policy, layout_of, pair
from keydnn.frontends.keras.convert_phase2 import (
    expand_1d, is_int, layout_1d, pads_1d, positive_int, spatial_pads, squeeze_1d,
)
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Conv2d

__all__: list[str] = []

_ACT = "fused activation 'linear' (others with allow_non_linear_activation)"


def _no_stride_with_dilation(ctx: LayerContext, strides: tuple[int, ...], dilations: tuple[int, ...]) -> None:
    if max(strides) > 1 and max(dilations) > 1:
        ctx.refuse("strides > 1 together with dilation_rate > 1", field="dilation_rate", value=list(dilations),
                   supported="strides or dilation_rate, as Keras itself requires")


def _single_group(ctx: LayerContext) -> None:
    # Keras 2 writes the Conv2D base class's ``groups`` for these layers too; only 1 means what Keras computes.
    groups = ctx.cfg("groups", 1)
    ctx.require(groups == 1, f"unsupported groups {groups!r}", field="groups", value=groups, supported="1")


def _window(ctx: LayerContext, layout: str) -> tuple:
    kernel = pair(ctx, "kernel_size", ctx.cfg("kernel_size"))
    strides = pair(ctx, "strides", ctx.cfg("strides", 1))
    dilations = pair(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    _no_stride_with_dilation(ctx, strides, dilations)
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    shape = ctx.need_type().shape
    sizes = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    return kernel, strides, dilations, spatial_pads(ctx, padding, sizes, kernel, strides, dilations)


def _depthwise_weight(ctx: LayerContext, name: str, kernel: tuple[int, int], channels: object,
                      multiplier: int) -> np.ndarray:
    """Keras (kh, kw, in, dm) -> IR (in * dm, 1, kh, kw); output channel c * dm + m, as Keras orders it."""
    w = ctx.weight(name)
    if w.ndim != 4 or tuple(w.shape[:2]) != kernel or w.shape[2] != channels or w.shape[3] != multiplier:
        ctx.refuse(f"{name} weight has shape {list(w.shape)}, expected {list(kernel)} x {channels} channels "
                   f"x depth_multiplier {multiplier}")
        raise Unconvertible
    kh, kw, cin, dm = w.shape
    return np.transpose(w, (2, 3, 0, 1)).reshape(cin * dm, 1, kh, kw)


def _depthwise(ctx: LayerContext, layout: str, weight_name: str, *, suffix: str | None,
               with_bias: bool) -> int:
    """Emit the depthwise conv2d (groups = input channels); returns its output channel count."""
    kernel, strides, dilations, pads = _window(ctx, layout)
    multiplier = positive_int(ctx, "depth_multiplier", ctx.cfg("depth_multiplier", 1))
    channels = ctx.need_type().shape[1 if layout == "NCHW" else 3]
    if not is_int(channels):
        ctx.refuse(f"the channel dimension of {ctx.need_type()} must be static")
        raise Unconvertible
    operands = [ctx.add_constant(weight_name, _depthwise_weight(ctx, weight_name, kernel, channels, multiplier))]
    if with_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    ctx.emit(Conv2d(strides=strides, dilations=dilations, pads=pads, groups=int(channels), layout=layout),
             *operands, suffix=suffix)
    return int(channels) * multiplier


@register_converter("DepthwiseConv2D", constraints=(
    "depth_multiplier, padding 'valid'/'same' (TensorFlow's rule), strides, dilation_rate, use_bias; "
    "both data formats; lowered to conv2d with groups = input channels; " + _ACT))
def convert_depthwise_conv2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = layout_of(ctx)
    _single_group(ctx)
    use_bias = ctx.check_in("use_bias", (True, False), True)
    _depthwise(ctx, layout, "kernel", suffix=None, with_bias=bool(use_bias))
    emit_fused_activation(ctx)


@register_converter("SeparableConv2D", constraints=(
    "depth_multiplier, padding 'valid'/'same', strides, dilation_rate, use_bias; both data formats; "
    "lowered to a depthwise conv2d then a 1x1 conv2d carrying the bias; " + _ACT))
def convert_separable_conv2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = layout_of(ctx)
    _single_group(ctx)
    filters = ctx.cfg("filters")
    use_bias = ctx.check_in("use_bias", (True, False), True)
    mid = _depthwise(ctx, layout, "depthwise_kernel", suffix="depthwise", with_bias=False)
    w = ctx.weight("pointwise_kernel")  # (1, 1, in * dm, filters)
    if w.shape != (1, 1, mid, filters):
        ctx.refuse(f"pointwise_kernel has shape {list(w.shape)}, expected [1, 1, {mid}, {filters}]")
        raise Unconvertible
    operands = [ctx.add_constant("pointwise_kernel", np.transpose(w, (3, 2, 0, 1)))]
    if use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    ctx.emit(Conv2d(layout=layout), *operands)
    emit_fused_activation(ctx)


@register_converter("Conv1D", constraints=(
    "padding 'valid'/'same' (TensorFlow's rule)/'causal' (left pad (k-1)*dilation), strides, "
    "dilation_rate, groups, use_bias; both data formats; lowered to conv2d on a size-1 axis; " + _ACT))
def convert_conv1d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = layout_1d(ctx)
    k = positive_int(ctx, "kernel_size", ctx.cfg("kernel_size"))
    stride = positive_int(ctx, "strides", ctx.cfg("strides", 1))
    dilation = positive_int(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    _no_stride_with_dilation(ctx, (stride,), (dilation,))
    groups = positive_int(ctx, "groups", ctx.cfg("groups", 1))
    filters = ctx.cfg("filters")
    use_bias = ctx.check_in("use_bias", (True, False), True)
    padding = ctx.check_in("padding", ("valid", "same", "causal"), "valid")
    left, right = pads_1d(ctx, layout, padding, k, stride, dilation)
    w = ctx.weight("kernel")  # (k, in / groups, out)
    if w.ndim != 3 or w.shape[0] != k or w.shape[2] != filters:
        ctx.refuse(f"kernel weight has shape {list(w.shape)}, config says kernel_size {k} x {filters} filters")
        raise Unconvertible
    operands = [ctx.add_constant("kernel", np.transpose(w, (2, 1, 0))[:, :, None, :])]
    if use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    layout_2d = expand_1d(ctx, layout)
    ctx.emit(Conv2d(strides=(1, stride), dilations=(1, dilation), pads=(0, 0, left, right), groups=groups,
                    layout=layout_2d), *operands, suffix="conv2d")  # type: ignore[arg-type]
    squeeze_1d(ctx, layout)
    emit_fused_activation(ctx)
