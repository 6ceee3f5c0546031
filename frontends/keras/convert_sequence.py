"""Converters of the sequence layers around the recurrences: Embedding (ids of any integer dtype; mask_zero),
Masking, RepeatVector and TimeDistributed (over any supported non-recurrent layer).

``Embedding(mask_zero=True)`` and ``Masking`` set the driver's ``out_mask``; the
recurrent converters consume it (see ``convert_recurrent``).
"""

from __future__ import annotations

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_recurrent import RNN_CLASSES, _emit_on
from keydnn.frontends.keras.lower import GraphLayerContext
from keydnn.frontends.keras.registry import CONVERTERS, LayerContext, Unconvertible, register_converter
from keydnn.frontends.keras.spec import LayerSpec
from keydnn.ir.ops.recurrent import Embedding, FoldTime, Masking, RepeatVector, SequenceMask, UnfoldTime

__all__: list[str] = []


@register_converter("Embedding", constraints=(
    "integer (any integer dtype) or integral float ids; mask_zero (a mask for the layers after it); an index "
    "outside [0, input_dim) is an error at run time"))
def convert_embedding(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    x = ctx.need_type()
    vocab, dim = ctx.cfg("input_dim"), ctx.cfg("output_dim")
    mask_zero = ctx.check_in("mask_zero", (False, True), False)
    ctx.cfg("input_length")  # Keras 2: the declared length, already in the input shape
    ctx.require(ctx.cfg("sparse", False) in (False, None), "sparse gradients option", field="sparse")
    ctx.require(ctx.cfg("lora_rank") is None, "LoRA embeddings are not supported", field="lora_rank",
                value=ctx.layer.config.get("lora_rank"), supported="lora_rank=None")
    ctx.require(ctx.cfg("quantization_config") is None, "quantized embeddings are not supported",
                field="quantization_config", supported="quantization_config=None")
    ctx.ignore("lora_alpha", "embeddings_initializer", "embeddings_regularizer", "embeddings_constraint")
    table = ctx.weight("embeddings")
    if table.shape != (vocab, dim):
        ctx.refuse(f"embeddings weight is {list(table.shape)}, config says ({vocab}, {dim})")
        raise Unconvertible
    ids = ctx.x
    out = ctx.emit(Embedding(), ctx.add_constant("embeddings", table))
    if mask_zero:
        if x.rank != 2:
            ctx.refuse(f"mask_zero needs (batch, time) ids, got {x}", field="mask_zero", value=True)
            raise Unconvertible
        mask = _emit_on(ctx, ids, SequenceMask(mask_value=0.0, dtype=ctx.options.dtype), suffix="mask")
        ctx.x, ctx.x_type = out, ctx.type_of(out)
        if isinstance(ctx, GraphLayerContext):
            ctx.out_mask = mask


@register_converter("Masking", constraints="mask_value (any number): zeroes the masked steps and masks the layers "
                                           "after it")
def convert_masking(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    value = ctx.cfg("mask_value", 0.0)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        ctx.refuse(f"invalid mask_value {value!r}", field="mask_value", value=value, supported="a number")
        raise Unconvertible
    x = ctx.x
    mask = _emit_on(ctx, x, SequenceMask(mask_value=float(value), dtype=ctx.options.dtype), suffix="mask")
    out = _emit_on(ctx, x, Masking(mask_value=float(value)), suffix=None)
    ctx.x, ctx.x_type = out, ctx.type_of(out)
    if isinstance(ctx, GraphLayerContext):
        ctx.out_mask = mask


@register_converter("RepeatVector", constraints="any n")
def convert_repeat_vector(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    n = ctx.cfg("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        ctx.refuse(f"invalid n {n!r}", field="n", value=n, supported="a positive int")
        raise Unconvertible
    ctx.emit(RepeatVector(n=n))


#: Layers TimeDistributed applies directly on the (N, T, ...) tensor: they act on the last axis only.
_PER_STEP = ("Dense", "Activation", "Dropout", "ReLU", "LeakyReLU", "ELU", "Softmax", "PReLU")
#: Layers TimeDistributed cannot wrap: they keep state across calls or are wrappers/models themselves.
_NOT_PER_STEP = frozenset(RNN_CLASSES) | {"Bidirectional", "TimeDistributed", "RNN", "Sequential", "Functional",
                                         "Model", "Embedding"}


@register_converter("TimeDistributed", constraints=(
    "over any supported layer but recurrent ones and models: " + ", ".join(_PER_STEP) + " run on the sequence "
    "directly; any other layer (Conv2D, Flatten, pooling, ...) on time folded into the batch "
    "(fold_time / unfold_time views); a mask passes through"))
def convert_time_distributed(ctx: LayerContext) -> None:
    from keydnn.frontends.keras.reader import canonical_weight_name, normalize_layer_config, positional_layout

    check_dtype_policy(ctx)
    entry = ctx.cfg("layer")
    cls = entry.get("class_name") if isinstance(entry, dict) else None
    if cls not in CONVERTERS or cls in _NOT_PER_STEP:
        ctx.refuse(f"TimeDistributed over {cls!r} is not supported", field="layer", value=cls,
                   supported="a supported layer that is not recurrent, a wrapper or a model")
        raise Unconvertible
    config = normalize_layer_config(entry.get("config") or {})
    names = (positional_layout(cls, config) or {}).get("", [])
    weights = []
    for name, arr in ctx.layer.weights:
        short = name.rsplit("/", 1)[-1]
        if short.startswith("var") and short[3:].isdigit() and int(short[3:]) < len(names):
            short = names[int(short[3:])]
        weights.append((canonical_weight_name(cls, short), arr))
    x_type = ctx.need_type()
    if x_type.rank < 3:
        ctx.refuse(f"TimeDistributed needs a (batch, time, ...) input, got {x_type}")
        raise Unconvertible
    seq = ctx.x
    fold = cls not in _PER_STEP
    if fold:
        _emit_on(ctx, seq, FoldTime(), suffix="fold")
    inner = LayerSpec(index=ctx.layer.index, class_name=cls, name=ctx.layer.name, config=config,
                      weights=tuple(weights))
    sub = LayerContext(layer=inner, x=ctx.x, x_type=ctx.x_type, options=ctx.options, problems=ctx.problems,
                       nodes=ctx.nodes, weights=ctx.weights)
    sub._node_name = lambda suffix: ctx._node_name("inner" if suffix is None else f"inner.{suffix}")  # type: ignore
    before = len(ctx.nodes)
    CONVERTERS[cls].fn(sub)
    for key in sub.unconsumed():
        ctx.refuse(f"layer config field {key!r} is not understood by keydnn", field=key,
                   value=config.get(key), supported="the fields documented for this layer")
    for node in ctx.nodes[before:]:
        ctx._emitted(node.name, node.outputs[0].type)
    ctx.x, ctx.x_type = sub.x, sub.x_type
    if fold:
        _emit_on(ctx, sub.x, UnfoldTime(), seq, suffix=None)
    if isinstance(ctx, GraphLayerContext):
        ctx.out_mask = ctx.in_mask
