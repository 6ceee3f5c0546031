"""Converters for the Phase-1 layer set: Conv2D, MaxPooling2D, GlobalAveragePooling2D,
Flatten, Dense, ReLU, Softmax (InputLayer is read by the reader)."""

from __future__ import annotations

from typing import Any

import numpy as np

from keydnn.frontends.keras.activations import emit_fused_activation
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.frontends.keras.values import finite_float
from keydnn.ir.ops import Conv2d, Dense, Flatten, GlobalAvgPool2d, MaxPool2d, Relu, Softmax, Transpose

__all__ = ["same_padding", "pair", "check_dtype_policy", "layout_of"]

_FORMATS = {"channels_first": "NCHW", "channels_last": "NHWC"}


def same_padding(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow's 'same' rule: out = ceil(in / stride); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def positive_ints(ctx: LayerContext, key: str, value: Any, n: int) -> tuple[int, ...]:
    """An int or an ``n``-sequence of positive ints, as Keras accepts for sizes, strides and dilation rates."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,) * n
    if (isinstance(value, (list, tuple)) and len(value) == n
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return tuple(int(v) for v in value)
    them = "a pair of them" if n == 2 else f"{n} of them"
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported=f"a positive int or {them}")
    raise Unconvertible


def pair(ctx: LayerContext, key: str, value: Any) -> tuple[int, int]:
    """``positive_ints`` of 2-D layers."""
    return positive_ints(ctx, key, value, 2)  # type: ignore[return-value]


def check_dtype_policy(ctx: LayerContext) -> None:
    policy = ctx.cfg("dtype", "float32")
    if policy not in (None, "float32", "float64"):
        ctx.refuse(f"unsupported dtype policy {policy!r}", field="dtype", value=policy,
                   supported="'float32' or 'float64' (mixed precision changes the math)")


def layout_of(ctx: LayerContext, rank: int = 4) -> str:
    """The layout named by ``data_format`` (an invalid value is recorded, and channels_last assumed)."""
    fmt = ctx.check_in("data_format", _FORMATS, "channels_last")
    x = ctx.need_type()
    if x.rank != rank:
        ctx.refuse(f"expects a rank-{rank} input, got {x}")
        raise Unconvertible
    return _FORMATS[fmt]


def _spatial_hw(x_shape: tuple, layout: str) -> tuple[Any, Any]:
    return (x_shape[2], x_shape[3]) if layout == "NCHW" else (x_shape[1], x_shape[2])


def _window_pads(ctx: LayerContext, layout: str, kernel: tuple[int, int], strides: tuple[int, int],
                 dilations: tuple[int, int]) -> tuple[int, int, int, int]:
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    if padding != "same":
        return (0, 0, 0, 0)
    h, w = _spatial_hw(ctx.need_type().shape, layout)
    if not (isinstance(h, int) and isinstance(w, int)):
        ctx.refuse("'same' padding needs static spatial dimensions", field="padding", value=padding)
        raise Unconvertible
    top, bottom = same_padding(h, kernel[0], strides[0], dilations[0])
    left, right = same_padding(w, kernel[1], strides[1], dilations[1])
    return (top, bottom, left, right)


@register_converter("Conv2D", constraints=(
    "padding 'valid'/'same' (asymmetric 'same' exactly as TensorFlow), any strides, dilation_rate, "
    "groups, use_bias; channels_first and channels_last; fused activation 'linear' "
    "(others with allow_non_linear_activation)"))
def convert_conv2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = layout_of(ctx)
    kernel = pair(ctx, "kernel_size", ctx.cfg("kernel_size"))
    strides = pair(ctx, "strides", ctx.cfg("strides", 1))
    dilations = pair(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    groups = ctx.cfg("groups", 1)
    filters = ctx.cfg("filters")
    use_bias = ctx.check_in("use_bias", (True, False), True)
    if max(strides) > 1 and max(dilations) > 1:
        ctx.refuse("strides > 1 together with dilation_rate > 1", field="dilation_rate", value=list(dilations),
                   supported="strides or dilation_rate, as Keras itself requires")
    pads = _window_pads(ctx, layout, kernel, strides, dilations)
    w = ctx.weight("kernel")  # (kh, kw, in/groups, out)
    if w.ndim != 4 or tuple(w.shape[:2]) != kernel or w.shape[3] != filters:
        ctx.refuse(f"kernel weight has shape {list(w.shape)}, config says {list(kernel)} x {filters} filters")
        raise Unconvertible
    operands = [ctx.add_constant("kernel", np.transpose(w, (3, 2, 0, 1)))]
    if use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    ctx.emit(Conv2d(strides=strides, dilations=dilations, pads=pads, groups=groups, layout=layout), *operands)
    emit_fused_activation(ctx)


@register_converter("MaxPooling2D", constraints=(
    "any pool_size, strides (also different from pool_size), padding 'valid'/'same'; both data formats"))
def convert_max_pool2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = layout_of(ctx)
    kernel = pair(ctx, "pool_size", ctx.cfg("pool_size", 2))
    strides_cfg = ctx.cfg("strides")
    strides = kernel if strides_cfg is None else pair(ctx, "strides", strides_cfg)
    pads = _window_pads(ctx, layout, kernel, strides, (1, 1))
    ctx.emit(MaxPool2d(kernel=kernel, strides=strides, pads=pads, layout=layout))


@register_converter("GlobalAveragePooling2D", constraints="keepdims true/false; both data formats")
def convert_global_avg_pool2d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = layout_of(ctx)
    keepdims = ctx.check_in("keepdims", (False, True), False)
    ctx.emit(GlobalAvgPool2d(keepdims=bool(keepdims), layout=layout))


@register_converter("Flatten", constraints=(
    "any input rank; data_format='channels_first' flattens in channels-last order, as Keras does"))
def convert_flatten(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    fmt = ctx.check_in("data_format", ("channels_last", "channels_first", None), "channels_last")
    x = ctx.need_type()
    if fmt == "channels_first" and x.rank > 2:
        # Keras moves the channel axis last before flattening a channels_first tensor.
        perm = (0, *range(2, x.rank), 1)
        ctx.emit(Transpose(perm=perm, layout="NHWC" if x.rank == 4 else "ANY"), suffix="to_channels_last")
    ctx.emit(Flatten())


@register_converter("Dense", constraints=(
    "any input rank (applied to the last axis), use_bias; fused activation 'linear' "
    "(others with allow_non_linear_activation)"))
def convert_dense(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    units = ctx.cfg("units")
    use_bias = ctx.check_in("use_bias", (True, False), True)
    for key in ("quantization_config", "lora_rank"):
        value = ctx.cfg(key)
        if value not in (None, 0):
            ctx.refuse(f"unsupported {key} {value!r}", field=key, value=value, supported="None")
    w = ctx.weight("kernel")
    if w.ndim != 2 or w.shape[1] != units:
        ctx.refuse(f"kernel weight has shape {list(w.shape)}, config says {units} units")
        raise Unconvertible
    operands = [ctx.add_constant("kernel", w)]
    if use_bias:
        operands.append(ctx.add_constant("bias", ctx.weight("bias")))
    ctx.emit(Dense(), *operands)
    emit_fused_activation(ctx)


def _number(ctx: LayerContext, key: str, default: float | None, *, allow_none: bool = False) -> float | None:
    value = ctx.cfg(key, default)
    if value is None and allow_none:
        return None
    number = finite_float(value)
    if number is not None and number >= 0:
        return number
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported="a finite number >= 0"
               + (" or None" if allow_none else ""))
    raise Unconvertible


@register_converter("ReLU", constraints="max_value, negative_slope, threshold (Keras semantics)")
def convert_relu(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    max_value = _number(ctx, "max_value", None, allow_none=True)
    slope = _number(ctx, "negative_slope", 0.0)
    threshold = ctx.cfg("threshold", 0.0)
    threshold_value = finite_float(threshold)
    if threshold_value is None:
        ctx.refuse(f"invalid threshold {threshold!r}", field="threshold", value=threshold, supported="a finite number")
        raise Unconvertible
    ctx.emit(Relu(max_value=max_value, negative_slope=slope or 0.0, threshold=threshold_value))


@register_converter("Softmax", constraints="one integer axis (negative allowed)")
def convert_softmax(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    axis = ctx.cfg("axis", -1)
    if isinstance(axis, (list, tuple)) and len(axis) == 1:
        axis = axis[0]
    if not isinstance(axis, int) or isinstance(axis, bool):
        ctx.refuse(f"unsupported axis {axis!r}", field="axis", value=axis, supported="a single integer axis")
        raise Unconvertible
    x = ctx.need_type()
    if not -x.rank <= axis < x.rank:
        ctx.refuse(f"axis {axis} is out of range for a rank-{x.rank} input", field="axis", value=axis)
        raise Unconvertible
    ctx.emit(Softmax(axis=axis))
