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

from typing import Any

import numpy as np

from keydnn.frontends.keras.convert_core import same_padding
from keydnn.frontends.keras.registry import LayerContext, Unconvertible
from keydnn.frontends.keras.values import is_int, is_number
from keydnn.ir.ops import ExpandDims, Squeeze
from keydnn.ir.types import TensorType

__all__ = [
    "is_int", "is_number", "positive_int", "finite_number", "padding_pairs", "spatial_pads",
    "data_format", "require_rank", "spatial_sizes", "channels", "expand_1d", "squeeze_1d", "pads_1d",
    "numeric_array",
]

_FORMATS_2D = {"channels_last": "NHWC", "channels_first": "NCHW"}
_FORMATS_1D = {"channels_last": "NWC", "channels_first": "NCW"}
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


def padding_pairs(ctx: LayerContext, key: str, value: Any) -> tuple[int, int, int, int]:
    """ZeroPadding2D / Cropping2D amounts: ``n``, ``(h, w)`` or ``((top, bottom), (left, right))``."""
    def ok(v: Any) -> bool:
        return is_int(v) and v >= 0

    if ok(value):
        return (int(value),) * 4  # type: ignore[return-value]
    if isinstance(value, (list, tuple)) and len(value) == 2:
        a, b = value
        if ok(a) and ok(b):
            return int(a), int(a), int(b), int(b)
        if all(isinstance(p, (list, tuple)) and len(p) == 2 and all(ok(v) for v in p) for p in (a, b)):
            return int(a[0]), int(a[1]), int(b[0]), int(b[1])
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value,
               supported="an int >= 0, a pair (rows, cols), or ((top, bottom), (left, right))")
    raise Unconvertible


def spatial_pads(ctx: LayerContext, padding: str, sizes: tuple[Any, Any], kernel: tuple[int, int],
                 strides: tuple[int, int], dilations: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for Keras ``padding`` 'valid' / 'same' (TensorFlow's rule)."""
    if padding != "same":
        return (0, 0, 0, 0)
    if not all(is_int(s) for s in sizes):
        ctx.refuse("'same' padding needs static spatial dimensions", field="padding", value=padding)
        raise Unconvertible
    top, bottom = same_padding(int(sizes[0]), kernel[0], strides[0], dilations[0])
    left, right = same_padding(int(sizes[1]), kernel[1], strides[1], dilations[1])
    return top, bottom, left, right


# -- data formats and ranks ---------------------------------------------------------
def data_format(ctx: LayerContext, rank: int) -> str:
    """The layout named by ``data_format`` for a rank-``rank`` input (NHWC/NCHW, NWC/NCW).

    Reads only the config: converters read all their fields before they need the
    input type, so a layer after an unconvertible one reports no spurious fields.
    An invalid value is recorded and channels_last is assumed to go on reading.
    """
    formats = _FORMATS_2D if rank == 4 else _FORMATS_1D
    fmt = ctx.check_in("data_format", formats, "channels_last")
    return formats[fmt] if isinstance(fmt, str) and fmt in formats else formats["channels_last"]


def require_rank(ctx: LayerContext, rank: int) -> TensorType:
    """The input type, which must have ``rank`` axes (batch included)."""
    x = ctx.need_type()
    if x.rank != rank:
        what = "(batch, steps, channels)" if rank == 3 else "(batch, rows, cols, channels)"
        ctx.refuse(f"expects a rank-{rank} input {what}, got {x}")
        raise Unconvertible
    return x


def spatial_sizes(x: TensorType, layout: str) -> tuple[Any, ...]:
    """The spatial dims of ``x`` in ``layout`` (H, W for 2-D layouts; W for 1-D ones)."""
    return tuple(x.shape[2:]) if layout in ("NCHW", "NCW") else tuple(x.shape[1:-1])


def channels(x: TensorType, layout: str) -> Any:
    return x.shape[1] if layout in ("NCHW", "NCW") else x.shape[-1]


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
