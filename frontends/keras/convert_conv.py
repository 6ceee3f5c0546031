"""Convolutions beyond Conv2D: DepthwiseConv2D, SeparableConv2D (both grouped conv2d), Conv1D (1-D conv2d).

Every converter reads its whole config before it looks at the input type (see
``convert_common.data_format``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keydnn.frontends.keras.activations import emit_fused_activation
from keydnn.frontends.keras.convert_core import check_dtype_policy, pair
from keydnn.frontends.keras.convert_common import (
    channels, data_format, expand_1d, is_int, pads_1d, positive_int, require_rank, spatial_pads, spatial_sizes,
    squeeze_1d,
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


@dataclass(frozen=True)
class _Depthwise:
    """The config of a depthwise convolution (DepthwiseConv2D, or the first half of SeparableConv2D)."""

    layout: str
    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    padding: str
    multiplier: int
    use_bias: bool

    @classmethod
    def read(cls, ctx: LayerContext) -> "_Depthwise":
        layout = data_format(ctx, 4)
        _single_group(ctx)
        kernel = pair(ctx, "kernel_size", ctx.cfg("kernel_size"))
        strides = pair(ctx, "strides", ctx.cfg("strides", 1))
        dilations = pair(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
        _no_stride_with_dilation(ctx, strides, dilations)
        padding = ctx.check_in("padding", ("valid", "same"), "valid")
        multiplier = positive_int(ctx, "depth_multiplier", ctx.cfg("depth_multiplier", 1))
        use_bias = ctx.check_in("use_bias", (True, False), True)
        return cls(layout, kernel, strides, dilations, padding, multiplier, bool(use_bias))

    def emit(self, ctx: LayerContext, weight_name: str, *, suffix: str | None, with_bias: bool) -> int:
        """Emit the conv2d with groups = input channels; returns its output channel count."""
        x = require_rank(ctx, 4)
        cin = channels(x, self.layout)
        if not is_int(cin):
            ctx.refuse(f"the channel dimension of {x} must be static")
            raise Unconvertible
        pads = spatial_pads(ctx, self.padding, spatial_sizes(x, self.layout), self.kernel, self.strides,
                            self.dilations)
        w = ctx.weight(weight_name)  # (kh, kw, in, dm)
        if w.ndim != 4 or tuple(w.shape[:2]) != self.kernel or w.shape[2:] != (cin, self.multiplier):
            ctx.refuse(f"{weight_name} weight has shape {list(w.shape)}, expected {list(self.kernel)} x {cin} "
                       f"channels x depth_multiplier {self.multiplier}")
            raise Unconvertible
        # IR weight (in * dm, 1, kh, kw): Keras orders the outputs c * dm + m.
        kh, kw = self.kernel
        operands = [ctx.add_constant(weight_name, np.transpose(w, (2, 3, 0, 1)).reshape(-1, 1, kh, kw))]
        if with_bias:
            operands.append(ctx.add_constant("bias", ctx.weight("bias")))
        ctx.emit(Conv2d(strides=self.strides, dilations=self.dilations, pads=pads, groups=int(cin),
                        layout=self.layout), *operands, suffix=suffix)  # type: ignore[arg-type]
        return int(cin) * self.multiplier


@register_converter("DepthwiseConv2D", constraints=(
    "depth_multiplier, padding 'valid'/'same' (TensorFlow's rule), strides, dilation_rate, use_bias; "
    "both data formats; lowered to conv2d with groups = input channels; " + _ACT))
def convert_depthwise_conv2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    conv = _Depthwise.read(ctx)
    ctx.cfg("activation")  # read first, lowered after the conv
    conv.emit(ctx, "kernel", suffix=None, with_bias=conv.use_bias)
    emit_fused_activation(ctx)


@register_converter("SeparableConv2D", constraints=(
    "depth_multiplier, padding 'valid'/'same', strides, dilation_rate, use_bias; both data formats; "
    "lowered to a depthwise conv2d then a 1x1 conv2d carrying the bias; " + _ACT))
def convert_separable_conv2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    conv = _Depthwise.read(ctx)
    filters = ctx.cfg("filters")
    ctx.cfg("activation")
    mid = conv.emit(ctx, "depthwise_kernel", suffix="depthwise", with_bias=False)
    w = ctx.weight("pointwise_kernel")  # (1, 1, in * dm, filters)
    if w.shape != (1, 1, mid, filters):
        ctx.refuse(f"pointwise_kernel has shape {list(w.shape)}, expected [1, 1, {mid}, {filters}]")
        raise Unconvertible
    operands = [ctx.add_constant("pointwise_kernel", np.transpose(w, (3, 2, 0, 1)))]
    if conv.use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    ctx.emit(Conv2d(layout=conv.layout), *operands)  # type: ignore[arg-type]
    emit_fused_activation(ctx)


@register_converter("Conv1D", constraints=(
    "padding 'valid'/'same' (TensorFlow's rule)/'causal' (left pad (k-1)*dilation), strides, "
    "dilation_rate, groups, use_bias; both data formats; lowered to conv2d on a size-1 axis; " + _ACT))
def convert_conv1d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = data_format(ctx, 3)
    k = positive_int(ctx, "kernel_size", ctx.cfg("kernel_size"))
    stride = positive_int(ctx, "strides", ctx.cfg("strides", 1))
    dilation = positive_int(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    _no_stride_with_dilation(ctx, (stride,), (dilation,))
    groups = positive_int(ctx, "groups", ctx.cfg("groups", 1))
    filters = ctx.cfg("filters")
    use_bias = ctx.check_in("use_bias", (True, False), True)
    padding = ctx.check_in("padding", ("valid", "same", "causal"), "valid")
    ctx.cfg("activation")
    x = require_rank(ctx, 3)
    left, right = pads_1d(ctx, spatial_sizes(x, layout)[0], padding, k, stride, dilation)
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
