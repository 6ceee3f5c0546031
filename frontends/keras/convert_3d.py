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
from keydnn.frontends.keras.convert_core import check_dtype_policy, same_padding
from keydnn.frontends.keras.convert_transposed import _output_padding, transpose_pads
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.frontends.keras.values import is_int
from keydnn.ir.ops import AvgPool3d, Conv3d, Crop3d, MaxPool3d, Pad3d, Reduce, Upsample3d
from keydnn.ir.types import TensorType

__all__ = ["triple", "pads3d"]

_FORMATS = {"channels_last": "NDHWC", "channels_first": "NCDHW"}
_ACT = "fused activation 'linear' (others with allow_non_linear_activation)"


def triple(ctx: LayerContext, key: str, value: Any) -> tuple[int, int, int]:
    """An int or a 3-sequence of positive ints (sizes, strides, dilation rates of 3-D layers)."""
    if is_int(value):
        value = (value,) * 3
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(is_int(v) and v >= 1 for v in value):
        return int(value[0]), int(value[1]), int(value[2])
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported="a positive int or 3 of them")
    raise Unconvertible


def pads3d(ctx: LayerContext, key: str, value: Any) -> tuple[int, int, int, int, int, int]:
    """ZeroPadding3D / Cropping3D amounts: ``n``, ``(d, h, w)`` or ``((front, back), (top, bottom), (left, right))``."""
    def ok(v: Any) -> bool:
        return is_int(v) and v >= 0

    if ok(value):
        return (int(value),) * 6  # type: ignore[return-value]
    if isinstance(value, (list, tuple)) and len(value) == 3:
        if all(ok(v) for v in value):
            return tuple(int(v) for v in value for _ in range(2))  # type: ignore[return-value]
        if all(isinstance(p, (list, tuple)) and len(p) == 2 and all(ok(v) for v in p) for p in value):
            return tuple(int(v) for p in value for v in p)  # type: ignore[return-value]
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value,
               supported="an int >= 0, 3 ints (depth, rows, cols), or 3 pairs ((front, back), (top, bottom), "
                         "(left, right))")
    raise Unconvertible


def _layout(ctx: LayerContext) -> str:
    """The layout ``data_format`` names (read before the input type; an invalid value is recorded)."""
    fmt = ctx.check_in("data_format", tuple(_FORMATS), "channels_last")
    return _FORMATS.get(fmt, "NDHWC")


def _input(ctx: LayerContext) -> TensorType:
    x = ctx.need_type()
    if x.rank != 5:
        ctx.refuse(f"expects a rank-5 input (batch, depth, rows, cols, channels) or channels_first, got {x}")
        raise Unconvertible
    return x


def _sizes(x: TensorType, layout: str) -> tuple[Any, ...]:
    return tuple(x.shape[2:]) if layout == "NCDHW" else tuple(x.shape[1:4])


def _channels(x: TensorType, layout: str) -> Any:
    return x.shape[1] if layout == "NCDHW" else x.shape[4]


def _window_pads(ctx: LayerContext, padding: str, x: TensorType, layout: str, kernel: tuple, strides: tuple,
                 dilations: tuple) -> tuple[int, int, int, int, int, int]:
    if padding != "same":
        return (0,) * 6  # type: ignore[return-value]
    sizes = _sizes(x, layout)
    if not all(is_int(s) for s in sizes):
        ctx.refuse("'same' padding needs static spatial dimensions", field="padding", value=padding)
        raise Unconvertible
    out: list[int] = []
    for s, k, st, d in zip(sizes, kernel, strides, dilations):
        out.extend(same_padding(int(s), k, st, d))
    return tuple(out)  # type: ignore[return-value]


@register_converter("Conv3D", constraints=(
    "padding 'valid'/'same' (asymmetric 'same' exactly as TensorFlow), any strides, dilation_rate, groups, "
    "use_bias; both data formats; " + _ACT))
def convert_conv3d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = _layout(ctx)
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
    x = _input(ctx)
    cin = _channels(x, layout)
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
    layout = _layout(ctx)
    kernel = triple(ctx, "kernel_size", ctx.cfg("kernel_size"))
    strides = triple(ctx, "strides", ctx.cfg("strides", 1))
    dilations = triple(ctx, "dilation_rate", ctx.cfg("dilation_rate", 1))
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    out_pad = _output_padding(ctx, 3, strides, dilations)
    use_bias = ctx.check_in("use_bias", (True, False), True)
    ctx.check_in("groups", (1,), 1)  # tf_keras writes groups=1
    filters = ctx.cfg("filters")
    ctx.cfg("activation")
    x = _input(ctx)
    cin = _channels(x, layout)
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
    layout = _layout(ctx)
    kernel = triple(ctx, "pool_size", ctx.cfg("pool_size", 2))
    strides_cfg = ctx.cfg("strides")
    strides = kernel if strides_cfg is None else triple(ctx, "strides", strides_cfg)
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    x = _input(ctx)
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
    layout = _layout(ctx)
    keepdims = ctx.check_in("keepdims", (False, True), False)
    _input(ctx)
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
    check_dtype_policy(ctx)
    layout = _layout(ctx)
    pads = pads3d(ctx, "padding", ctx.cfg("padding", 1))
    _input(ctx)
    ctx.emit(Pad3d(pads=pads, layout=layout))  # type: ignore[arg-type]


@register_converter("Cropping3D", constraints="cropping as an int, 3 ints or 3 pairs; both data formats")
def convert_cropping3d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = _layout(ctx)
    crops = pads3d(ctx, "cropping", ctx.cfg("cropping", 1))
    _input(ctx)
    ctx.emit(Crop3d(crops=crops, layout=layout))  # type: ignore[arg-type]


@register_converter("UpSampling3D", constraints="size as an int or 3 ints (nearest repeat); both data formats")
def convert_upsampling3d(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    layout = _layout(ctx)
    factors = triple(ctx, "size", ctx.cfg("size", 2))
    _input(ctx)
    ctx.emit(Upsample3d(factors=factors, layout=layout))  # type: ignore[arg-type]


@register_converter("SpatialDropout3D", constraints=(
    "identity at inference (no node); rate, noise_shape and seed only act in training; both data formats"))
def convert_spatial_dropout3d(ctx: LayerContext) -> None:
    from keydnn.frontends.keras.convert_identity import _identity

    _identity(ctx, "rate", noise_shape=True, data_format=True)
