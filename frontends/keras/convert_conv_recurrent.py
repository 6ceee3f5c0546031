"""Converters of ConvLSTM2D and ConvLSTM1D: the input convolution of every step as one ``conv2d`` over time
folded into the batch, then a ``conv_lstm`` recurrence (``keydnn.ir.ops.conv_recurrent``).

ConvLSTM1D runs as the 2-D op on a size-1 H axis (``expand_dims`` / ``squeeze``,
as keydnn's other 1-D layers do). channels_last only: channels_first is refused
by name (the recurrence is written for channels-last states).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from keydnn.frontends.keras.convert_core import check_dtype_policy, same_padding
from keydnn.frontends.keras.convert_recurrent import (
    _emit_on, _finish, _pick, _settings, _state_names, _top_fields,
)
from keydnn.frontends.keras.lower import MULTI_INPUT_LAYERS
from keydnn.frontends.keras.registry import LayerContext, Unconvertible, register_converter
from keydnn.ir.ops import Conv2d, ExpandDims, Squeeze
from keydnn.ir.ops.conv_recurrent import ConvLstm
from keydnn.ir.ops.recurrent import FoldTime, UnfoldTime

__all__: list[str] = []

MULTI_INPUT_LAYERS.update({"ConvLSTM1D", "ConvLSTM2D"})


def _ints(ctx: LayerContext, key: str, rank: int, default: Any) -> tuple[int, ...]:
    value = ctx.cfg(key, default)
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value] * rank
    if (isinstance(value, (list, tuple)) and len(value) == rank
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return tuple(int(v) for v in value)
    ctx.refuse(f"invalid {key} {value!r}", field=key, value=value, supported=f"a positive int or {rank} of them")
    raise Unconvertible


def _convert_conv_lstm(ctx: LayerContext, rank: int) -> None:
    check_dtype_policy(ctx)
    get = _top_fields(ctx)
    ctx.check_in("data_format", ("channels_last", None), "channels_last",
                 supported="'channels_last' (channels_first ConvLSTM is not supported)")
    filters = ctx.cfg("filters")
    if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
        ctx.refuse(f"invalid filters {filters!r}", field="filters", value=filters, supported="a positive int")
        raise Unconvertible
    kernel = _ints(ctx, "kernel_size", rank, None)
    strides = _ints(ctx, "strides", rank, 1)
    dilations = _ints(ctx, "dilation_rate", rank, 1)
    padding = ctx.check_in("padding", ("valid", "same"), "valid")
    # the LSTM fields (units come from filters): reuse the LSTM reader with units = filters
    config = dict(ctx.layer.config, units=filters)
    s = _settings(ctx, "LSTM", lambda key, default=None: config.get(key, default) if key == "units" else get(key, default))
    x_type = ctx.need_type()
    if x_type.rank != rank + 3:
        ctx.refuse(f"expects a (batch, time, {'rows, cols, ' if rank == 2 else 'steps, '}channels) input, got {x_type}")
        raise Unconvertible
    spatial = x_type.shape[2:2 + rank]
    arrays = _pick(ctx, list(ctx.layer.weights), s)
    k_in, k_rec = arrays[0], arrays[1]
    channels = x_type.shape[-1]
    if k_in.shape != (*kernel, channels, 4 * filters) or k_rec.shape != (*kernel, filters, 4 * filters):
        ctx.refuse(f"kernels {list(k_in.shape)} / {list(k_rec.shape)} do not fit {filters} filters of size "
                   f"{list(kernel)} on {channels} channels")
        raise Unconvertible
    if rank == 1:
        kernel, strides, dilations = (1,) + kernel, (1,) + strides, (1,) + dilations
        spatial = (1,) + tuple(spatial)
        k_in, k_rec = k_in[None], k_rec[None]
    pads = (0, 0, 0, 0)
    if padding == "same":
        if not all(isinstance(d, int) for d in spatial):
            ctx.refuse("'same' padding needs static spatial dimensions", field="padding", value=padding)
            raise Unconvertible
        top, bottom = same_padding(spatial[0], kernel[0], strides[0], dilations[0])
        left, right = same_padding(spatial[1], kernel[1], strides[1], dilations[1])
        pads = (top, bottom, left, right)
    seq = ctx.x
    folded = _emit_on(ctx, seq, FoldTime(), suffix="fold")
    if rank == 1:
        folded = _emit_on(ctx, folded, ExpandDims(axis=1, layout="NHWC"), suffix="expand")
    operands = [ctx.add_constant("kernel", np.transpose(k_in, (3, 2, 0, 1)))]
    if s.use_bias:
        operands.append(ctx.add_constant("bias", arrays[2]))
    conv = _emit_on(ctx, folded, Conv2d(strides=strides, dilations=dilations, pads=pads, layout="NHWC"), *operands,
                    suffix="projection")
    proj = _emit_on(ctx, conv, UnfoldTime(), seq, suffix="unfold")
    rk = ctx.add_constant("recurrent_kernel", k_rec)
    given = list(getattr(ctx, "inputs", ())[1:])
    if given and len(given) != 2:
        ctx.refuse(f"initial_state has {len(given)} tensor(s); a ConvLSTM takes 2", field="initial_state")
        raise Unconvertible
    if rank == 1 and given:
        given = [_emit_on(ctx, g, ExpandDims(axis=1, layout="NHWC"), suffix=f"state{i}") for i, g in enumerate(given)]
    extra = ([ctx.in_mask] if ctx.in_mask else []) + given
    wanted = ("output",) + (_state_names(s) if s.return_state else ())
    results = []
    for result in wanted:
        op = ConvLstm(filters=filters, kernel=kernel, activation=s.activation,
                      recurrent_activation=s.recurrent_activation, go_backwards=s.go_backwards,
                      return_sequences=s.return_sequences, zero_output_for_mask=s.zero_output_for_mask,
                      result=result, masked=bool(ctx.in_mask), initial_states=len(given))
        value = _emit_on(ctx, proj, op, rk, *extra, suffix=None if result == "output" and rank == 2 else result)
        if rank == 1:
            sequence = result == "output" and s.return_sequences
            value = _emit_on(ctx, value, Squeeze(axis=2 if sequence else 1, layout="ANY" if sequence else "NWC"),
                             suffix=None if result == "output" else f"{result}.squeeze")
        results.append(value)
    _finish(ctx, results[0], results[1:], s.return_sequences)


_DOC = ("filters, kernel_size, strides, dilation_rate, padding 'valid'/'same' (TensorFlow's rule), use_bias, "
        "activation, recurrent_activation, return_sequences, return_state, go_backwards, initial_state, masks; "
        "channels_last only; stateful=True refused; dropout/recurrent_dropout identities at inference; "
        "any sequence length")


@register_converter("ConvLSTM2D", constraints=_DOC)
def convert_conv_lstm2d(ctx: LayerContext) -> None:
    _convert_conv_lstm(ctx, 2)


@register_converter("ConvLSTM1D", constraints=_DOC + "; lowered to the 2-D op on a size-1 axis")
def convert_conv_lstm1d(ctx: LayerContext) -> None:
    _convert_conv_lstm(ctx, 1)

