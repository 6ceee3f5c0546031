"""Layers that are the identity at inference: the dropout and noise family, ActivityRegularization.

Each converter reads (and checks) every field its layer has, then emits no
node: the layer's result is its input, and the driver records the layer with
an empty node list. They are converters rather than entries of
``lower.IGNORED_AT_INFERENCE`` so that a field keydnn does not know (a new
Keras option) is still refused by name, and so that the artifact still lists
the layer.
"""

from __future__ import annotations

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_common import is_int, is_number
from keydnn.frontends.keras.registry import LayerContext, register_converter

__all__: list[str] = []


def _rate(ctx: LayerContext, key: str) -> None:
    value = ctx.cfg(key, 0.0)
    ctx.require(is_number(value) and value >= 0, f"invalid {key} {value!r}", field=key, value=value,
                supported="a finite number >= 0")


def _noise_shape(ctx: LayerContext) -> None:
    # Which axes share a dropout mask; only matters when dropping (training).
    value = ctx.cfg("noise_shape")
    ok = value is None or (isinstance(value, list) and all(v is None or is_int(v) for v in value))
    ctx.require(ok, f"invalid noise_shape {value!r}", field="noise_shape", value=value,
                supported="None or a list of ints / None")


def _identity(ctx: LayerContext, *numbers: str, noise_shape: bool = False, data_format: bool = False) -> None:
    check_dtype_policy(ctx)
    for key in numbers:
        _rate(ctx, key)
    if noise_shape:
        _noise_shape(ctx)
    if data_format:
        ctx.check_in("data_format", ("channels_last", "channels_first", None), "channels_last")
    # seed only drives the training-time randomness (it is in TRAINING_ONLY_FIELDS).


_DROPOUT = "identity at inference (no node); rate, noise_shape and seed only act in training"


@register_converter("Dropout", constraints=_DROPOUT)
def convert_dropout(ctx: LayerContext) -> None:
    _identity(ctx, "rate", noise_shape=True)


@register_converter("SpatialDropout1D", constraints=_DROPOUT)
def convert_spatial_dropout1d(ctx: LayerContext) -> None:
    _identity(ctx, "rate", noise_shape=True)


@register_converter("SpatialDropout2D", constraints=_DROPOUT + "; both data formats")
def convert_spatial_dropout2d(ctx: LayerContext) -> None:
    _identity(ctx, "rate", noise_shape=True, data_format=True)


@register_converter("GaussianNoise", constraints="identity at inference (no node); stddev only acts in training")
def convert_gaussian_noise(ctx: LayerContext) -> None:
    _identity(ctx, "stddev")


@register_converter("GaussianDropout", constraints="identity at inference (no node); rate only acts in training")
def convert_gaussian_dropout(ctx: LayerContext) -> None:
    _identity(ctx, "rate")


@register_converter("ActivityRegularization", constraints=(
    "identity at inference (no node); l1 and l2 only add a training loss"))
def convert_activity_regularization(ctx: LayerContext) -> None:
    _identity(ctx, "l1", "l2")
