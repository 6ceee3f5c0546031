"""Transposed convolutions (Conv2DTranspose, Conv1DTranspose) and the 1-D depthwise / separable
convolutions (DepthwiseConv1D, SeparableConv1D).

A transposed convolution lowers to ``dilate_pad2d`` (``strides - 1`` zeros
between input pixels and the border Keras's padding rule implies) followed by
an ordinary stride-1 ``conv2d`` with the kernel flipped and its in/out axes
swapped; the borders follow ``keras.src.backend.common.backend_utils`` (the
rule every Keras backend matches TensorFlow's ``conv2d_transpose`` with).
1-D layers run as their 2-D form on a size-1 H axis, like Conv1D.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keydnn.frontends.keras.activations import emit_fused_activation
from keydnn.frontends.keras.convert_core import check_dtype_policy, pair
from keydnn.frontends.keras.convert_common import (
    channels, data_format, expand_1d, is_int, pads_1d, positive_int, require_rank, spatial_sizes, squeeze_1d,
)
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Conv2d, DilatePad2d

__all__ = ["transpose_pads"]

_ACT = "fused activation 'linear' (others with allow_non_linear_activation)"


def transpose_pads(k: int, stride: int, dilation: int, padding: str, output_padding: int | None) -> tuple[int, int]:
    """(left, right) zeros around the stuffed input (Keras's rule, the same for every backend)."""
    k = (k - 1) * dilation + 1
    if padding == "valid":
        extra = max(k, stride) - k if output_padding is None else output_padding
        return k - 1, k - 1 + extra
    pad_len = stride + k - 2 if output_padding is None else k + k % 2 - 2 + output_padding
    left = min(pad_len // 2 + pad_len % 2, k - 1)
    return left, pad_len - left


def _output_padding(ctx: LayerContext, rank: int, strides: tuple[int, ...], dilations: tuple[int, ...]) -> Any:
    value = ctx.cfg("output_padding")
    if value is None:
        return [None] * rank
    values = [value] * rank if is_int(value) else value
    if not (isinstance(values, list) and len(values) == rank and all(is_int(v) and v >= 0 for v in values)):
        ctx.refuse(f"unsupported output_padding {value!r}", field="output_padding", value=value,
                   supported=f"None, an int or {rank} ints >= 0")
        raise Unconvertible
    for v, s, d in zip(values, strides, dilations):
        if v >= max(s, d):
            ctx.refuse(f"output_padding {value!r} must be smaller than the stride or dilation", field="output_padding",
                       value=value)
            raise Unconvertible
    return values


def _common(ctx: LayerContext, rank: int) -> tuple[str, tuple, tuple, tuple, str, Any, bool, int]:
    check_dtype_policy(ctx)
    layout = data_format(ctx, rank + 2)
    if rank == 2:
        kernel = pair(ctx, "kernel_size", ctx.cfg("kernel_size"))
        strides = pair(ctx, "strides", ctx.cfg("strides", 1))
        dilations = pair(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    else:
        kernel = (positive_int(ctx, "kernel_size", ctx.cfg("kernel_size")),)
        strides = (positive_int(ctx, "strides", ctx.cfg("strides", 1)),)
        dilations = (positive_int(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1)),)
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    out_pad = _output_padding(ctx, rank, strides, dilations)
    use_bias = ctx.check_in("use_bias", (True, False), True)
    filters = ctx.cfg("filters")
    groups = ctx.cfg("groups", 1)
    if groups != 1:
        ctx.refuse(f"unsupported groups {groups!r}", field="groups", value=groups, supported="1")
    ctx.cfg("activation")  # lowered after the conv
    return layout, kernel, strides, dilations, padding, out_pad, bool(use_bias), filters


def _flipped(ctx: LayerContext, w: np.ndarray, kernel: tuple, filters: Any, cin: Any) -> np.ndarray:
    """Keras's (k..., out, in) transposed kernel as the IR conv2d weight (out, in, kh, kw), flipped."""
    if w.shape != tuple(kernel) + (filters, cin):
        ctx.refuse(f"kernel weight has shape {list(w.shape)}, expected {[*kernel, filters, cin]}")
        raise Unconvertible
    flipped = w[::-1, ::-1] if w.ndim == 4 else w[::-1]
    return np.ascontiguousarray(np.moveaxis(flipped, (-2, -1), (0, 1))) if w.ndim == 4 else \
        np.ascontiguousarray(np.transpose(flipped, (1, 2, 0))[:, :, None, :])


@register_converter("Conv2DTranspose", constraints=(
    "strides, padding 'valid'/'same', output_padding, dilation_rate, use_bias; both data formats; lowered to "
    "dilate_pad2d + a stride-1 conv2d with the flipped kernel; " + _ACT))
def convert_conv2d_transpose(ctx: LayerContext) -> None:
    layout, kernel, strides, dilations, padding, out_pad, use_bias, filters = _common(ctx, 2)
    x = require_rank(ctx, 4)
    cin = channels(x, layout)
    pads = [transpose_pads(k, s, d, padding, p) for k, s, d, p in zip(kernel, strides, dilations, out_pad)]
    weight = _flipped(ctx, ctx.weight("kernel"), kernel, filters, cin)
    operands = [ctx.add_constant("kernel", weight)]
    if use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    ctx.emit(DilatePad2d(factors=strides, pads=(*pads[0], *pads[1]), layout=layout), suffix="stuff")  # type: ignore
    ctx.emit(Conv2d(dilations=dilations, layout=layout), *operands)  # type: ignore[arg-type]
    emit_fused_activation(ctx)


@register_converter("Conv1DTranspose", constraints=(
    "strides, padding 'valid'/'same', output_padding, dilation_rate, use_bias; both data formats; lowered to "
    "dilate_pad2d + conv2d on a size-1 axis; " + _ACT))
def convert_conv1d_transpose(ctx: LayerContext) -> None:
    layout, kernel, strides, dilations, padding, out_pad, use_bias, filters = _common(ctx, 1)
    x = require_rank(ctx, 3)
    cin = channels(x, layout)
    left, right = transpose_pads(kernel[0], strides[0], dilations[0], padding, out_pad[0])
    weight = _flipped(ctx, ctx.weight("kernel"), kernel, filters, cin)
    operands = [ctx.add_constant("kernel", weight)]
    if use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    layout_2d = expand_1d(ctx, layout)
    ctx.emit(DilatePad2d(factors=(1, strides[0]), pads=(0, 0, left, right), layout=layout_2d),  # type: ignore
             suffix="stuff")
    ctx.emit(Conv2d(dilations=(1, dilations[0]), layout=layout_2d), *operands, suffix="conv2d")  # type: ignore
    squeeze_1d(ctx, layout)
    emit_fused_activation(ctx)


def _depthwise_1d(ctx: LayerContext, *, separable: bool) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 3)
    k = positive_int(ctx, "kernel_size", ctx.cfg("kernel_size"))
    stride = positive_int(ctx, "strides", ctx.cfg("strides", 1))
    dilation = positive_int(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    dm = positive_int(ctx, "depth_multiplier", ctx.cfg("depth_multiplier", 1))
    use_bias = ctx.check_in("use_bias", (True, False), True)
    filters = ctx.cfg("filters") if separable else None
    ctx.check_in("groups", (1,), 1)  # Keras 2 writes groups=1 for these
    ctx.cfg("activation")
    if stride > 1 and dilation > 1:
        ctx.refuse("strides > 1 together with dilation_rate > 1", field="dilation_rate", value=dilation)
        raise Unconvertible
    x = require_rank(ctx, 3)
    cin = channels(x, layout)
    if not is_int(cin):
        ctx.refuse(f"the channel dimension of {x} must be static")
        raise Unconvertible
    left, right = pads_1d(ctx, spatial_sizes(x, layout)[0], padding, k, stride, dilation)
    name = "depthwise_kernel" if separable else "kernel"
    w = ctx.weight(name)  # (k, in, dm)
    if w.shape != (k, cin, dm):
        ctx.refuse(f"{name} weight has shape {list(w.shape)}, expected {[k, cin, dm]}")
        raise Unconvertible
    operands = [ctx.add_constant(name, np.transpose(w, (1, 2, 0)).reshape(cin * dm, 1, 1, k))]
    if use_bias and not separable:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    layout_2d = expand_1d(ctx, layout)
    ctx.emit(Conv2d(strides=(1, stride), dilations=(1, dilation), pads=(0, 0, left, right), groups=int(cin),
                    layout=layout_2d), *operands, suffix="depthwise")  # type: ignore[arg-type]
    if separable:
        pw = ctx.weight("pointwise_kernel")  # (1, in * dm, filters)
        if pw.shape != (1, cin * dm, filters):
            ctx.refuse(f"pointwise_kernel weight has shape {list(pw.shape)}, expected {[1, cin * dm, filters]}")
            raise Unconvertible
        ops = [ctx.add_constant("pointwise_kernel", np.transpose(pw, (2, 1, 0))[:, :, None, :])]
        if use_bias:
            ops.append(ctx.add_constant("bias", ctx.weight("bias")))
        ctx.emit(Conv2d(layout=layout_2d), *ops, suffix="pointwise")  # type: ignore[arg-type]
    squeeze_1d(ctx, layout)
    emit_fused_activation(ctx)


@register_converter("DepthwiseConv1D", constraints=(
    "depth_multiplier, padding 'valid'/'same', strides, dilation_rate, use_bias; both data formats; "
    "conv2d with groups = channels on a size-1 axis; " + _ACT))
def convert_depthwise_conv1d(ctx: LayerContext) -> None:
    _depthwise_1d(ctx, separable=False)


@register_converter("SeparableConv1D", constraints=(
    "depth_multiplier, padding 'valid'/'same', strides, dilation_rate, use_bias; both data formats; "
    "a depthwise and a pointwise conv2d on a size-1 axis; " + _ACT))
def convert_separable_conv1d(ctx: LayerContext) -> None:
    _depthwise_1d(ctx, separable=True)
