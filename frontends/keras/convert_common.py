"""Helpers shared by the layer converters: parsing config values and the 1-D lowering.

The converters themselves live by family: ``convert_identity`` (Dropout and the
other layers that are the identity at inference), ``convert_activation``
(Activation, LeakyReLU, ELU, PReLU), ``convert_norm`` (BatchNormalization,
Rescaling, Normalization), ``convert_conv`` (DepthwiseConv2D, SeparableConv2D,
Conv1D), ``convert_spatial`` (pooling, padding, cropping, upsampling in 1-D
and 2-D) and ``convert_shape`` (Reshape, Permute). Importing
``keydnn.frontends.keras`` registers all of them.

1-D layers follow the IR convention of ``keydnn.ir.ops.shape``: the matching
2-D op on a size-1 H axis between ``expand_dims`` and ``squeeze``, with the H
parameters the identity.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from keydnn.frontends.keras.convert_core import check_dtype_policy, same_padding
from keydnn.frontends.keras.registry import LayerContext, Unconvertible
from keydnn.frontends.keras.values import is_int, is_number
from keydnn.ir.ops import ExpandDims, OpBase, Squeeze
from keydnn.ir.types import TensorType

__all__ = [
    "is_int", "is_number", "positive_int", "finite_number", "padding_amounts", "spatial_pads", "emit_spatial",
    "data_format", "require_rank", "spatial_sizes", "channels", "expand_1d", "squeeze_1d", "pads_1d",
    "numeric_array",
]

_FORMATS_2D = {"channels_last": "NHWC", "channels_first": "NCHW"}
_FORMATS_1D = {"channels_last": "NWC", "channels_first": "NCW"}
_FORMATS_3D = {"channels_last": "NDHWC", "channels_first": "NCDHW"}
_FORMATS = {3: _FORMATS_1D, 4: _FORMATS_2D, 5: _FORMATS_3D}
#: Layouts with channels right after the batch axis.
_CHANNELS_FIRST = ("NCW", "NCHW", "NCDHW")
#: Names of the spatial axes and of their borders, per number of axes (what the padding errors say).
_AXES = {2: ("(rows, cols)", "((top, bottom), (left, right))"),
         3: ("3 ints (depth, rows, cols)", "3 pairs ((front, back), (top, bottom), (left, right))")}
#: 1-D layout -> (axis expand_dims inserts, layout of the 2-D op).
_EXPAND = {"NWC": (1, "NHWC"), "NCW": (2, "NCHW")}


def positive_int(ctx: LayerContext, key: str, value: Any) -> int:
    """An int >= 1, or a one-element list of one (how 1-D layers store sizes)."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if is_int(value) and value >= 1:
        return int(value)
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported="a positive int (or a 1-element list)")
    raise Unconvertible


def finite_number(ctx: LayerContext, key: str, default: Any) -> float:
    value = ctx.cfg(key, default)
    if is_number(value):
        return float(value)
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported="a finite number")
    raise Unconvertible


def padding_amounts(ctx: LayerContext, key: str, value: Any, axes: int) -> tuple[int, ...]:
    """ZeroPadding / Cropping amounts of ``axes`` spatial axes (2 or 3): ``n``, one int per axis, or one
    (before, after) pair per axis; returned as (before, after) per axis."""
    def ok(v: Any) -> bool:
        return is_int(v) and v >= 0

    if ok(value):
        return (int(value),) * (2 * axes)
    if isinstance(value, (list, tuple)) and len(value) == axes:
        if all(ok(v) for v in value):
            return tuple(int(v) for v in value for _ in range(2))
        if all(isinstance(p, (list, tuple)) and len(p) == 2 and all(ok(v) for v in p) for p in value):
            return tuple(int(v) for p in value for v in p)
    per_axis, pairs = _AXES[axes]
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value,
               supported=f"an int >= 0, {'a pair ' if axes == 2 else ''}{per_axis}, or {pairs}")
    raise Unconvertible


def spatial_pads(ctx: LayerContext, padding: str, sizes: tuple[Any, ...], kernel: tuple[int, ...],
                 strides: tuple[int, ...], dilations: tuple[int, ...]) -> tuple[int, ...]:
    """(before, after) per spatial axis for Keras ``padding`` 'valid' / 'same' (TensorFlow's rule)."""
    if padding != "same":
        return (0,) * (2 * len(sizes))
    if not all(is_int(s) for s in sizes):
        ctx.refuse("'same' padding needs static spatial dimensions", field="padding", value=padding)
        raise Unconvertible
    return tuple(v for s, k, st, d in zip(sizes, kernel, strides, dilations)
                 for v in same_padding(int(s), k, st, d))


def emit_spatial(ctx: LayerContext, rank: int, key: str, default: Any,
                 parse: Callable[[LayerContext, str, Any], Any], make: Callable[[Any, str], OpBase]) -> None:
    """A weightless spatial layer (ZeroPadding, Cropping, UpSampling in 2-D and 3-D): the dtype policy,
    ``data_format``, the one amount config ``key`` read by ``parse``, the input's rank, one op
    ``make(amount, layout)``."""
    check_dtype_policy(ctx)
    layout = data_format(ctx, rank)
    amount = parse(ctx, key, ctx.cfg(key, default))
    require_rank(ctx, rank)
    ctx.emit(make(amount, layout))


# -- data formats and ranks ---------------------------------------------------------
def data_format(ctx: LayerContext, rank: int) -> str:
    """The layout named by ``data_format`` for a rank-``rank`` input (NHWC/NCHW, NWC/NCW).

    Reads only the config: converters read all their fields before they need the
    input type, so a layer after an unconvertible one reports no spurious fields.
    An invalid value is recorded and channels_last is assumed to go on reading.
    """
    formats = _FORMATS.get(rank, _FORMATS_1D)
    fmt = ctx.check_in("data_format", formats, "channels_last")
    return formats[fmt] if isinstance(fmt, str) and fmt in formats else formats["channels_last"]


def require_rank(ctx: LayerContext, rank: int) -> TensorType:
    """The input type, which must have ``rank`` axes (batch included)."""
    x = ctx.need_type()
    if x.rank != rank:
        what = {3: "(batch, steps, channels)", 5: "(batch, depth, rows, cols, channels)"}.get(
            rank, "(batch, rows, cols, channels)")
        ctx.refuse(f"expects a rank-{rank} input {what}, got {x}")
        raise Unconvertible
    return x


def spatial_sizes(x: TensorType, layout: str) -> tuple[Any, ...]:
    """The spatial dims of ``x`` in ``layout`` (D, H, W; H, W; or W)."""
    return tuple(x.shape[2:]) if layout in _CHANNELS_FIRST else tuple(x.shape[1:-1])


def channels(x: TensorType, layout: str) -> Any:
    return x.shape[1] if layout in _CHANNELS_FIRST else x.shape[-1]


# -- 1-D layers -------------------------------------------------------------------
def pads_1d(ctx: LayerContext, width: Any, padding: str, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """(left, right) padding of the steps axis: 'valid', 'same' (TensorFlow's rule) or 'causal'."""
    if padding == "causal":
        return (k - 1) * dilation, 0
    if padding != "same":
        return 0, 0
    if not is_int(width):
        ctx.refuse("'same' padding needs a static number of steps", field="padding", value=padding)
        raise Unconvertible
    return same_padding(int(width), k, stride, dilation)


def expand_1d(ctx: LayerContext, layout: str) -> str:
    """Insert the size-1 H axis; returns the 2-D layout the layer's op runs in."""
    axis, layout_2d = _EXPAND[layout]
    ctx.emit(ExpandDims(axis=axis, layout=layout_2d), suffix="expand")  # type: ignore[arg-type]
    return layout_2d


def squeeze_1d(ctx: LayerContext, layout: str, *, suffix: str | None = None) -> None:
    """Remove the H axis again (the node gets the layer's name unless ``suffix``)."""
    ctx.emit(Squeeze(axis=_EXPAND[layout][0], layout=layout), suffix=suffix)  # type: ignore[arg-type]


# -- numeric config values ----------------------------------------------------------
def numeric_array(ctx: LayerContext, key: str, value: Any) -> np.ndarray:
    """A number, a (nested) list of numbers, or Keras 3's serialized NumPy array, as float64."""
    if isinstance(value, dict) and value.get("class_name") == "__numpy__" and isinstance(value.get("config"), dict):
        value = value["config"].get("value")
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
        array = None
    if array is None or array.dtype == object or not np.all(np.isfinite(array)):
        ctx.refuse(f"invalid {key} {value!r}", field=key, value=value,
                   supported="a finite number or a (nested) list of finite numbers")
        raise Unconvertible
    return array
