"""Attention layers lowered to ops the passes see: MultiHeadAttention, GroupQueryAttention, Attention and
AdditiveAttention (Dot and EinsumDense: ``convert_einsum``).

MultiHeadAttention (rank-3 query/value, Keras's default attention axis)
becomes: three ``dense`` projections (Keras's EinsumDense kernels
``(dim, heads, key_dim)`` flattened to ``(dim, heads * key_dim)``), a
``reshape`` + ``transpose`` to ``(B, heads, T, key_dim)``, ``matmul`` with
``transpose_b`` and the ``1/sqrt(key_dim)`` scale folded in, the masks as an
additive bias (-1e9 where Keras masks), ``softmax`` over the key axis,
``matmul`` with the values, and the output projection as one ``dense``. Weight
names differ by source: ``query_dense/var0`` in ``.keras`` archives,
``query/kernel`` in ``.h5`` files and live models.
"""

from __future__ import annotations

import math

import numpy as np

from keydnn.frontends.keras.convert_core import check_dtype_policy
from keydnn.frontends.keras.convert_common import is_int
from keydnn.frontends.keras.wiring import TENSOR_KWARGS
from keydnn.frontends.keras.lower import MULTI_INPUT_LAYERS
from keydnn.frontends.keras.registry import (
    LayerContext,
    Unconvertible,
    register_converter,
)
from keydnn.ir.ops import (
    Activation,
    Binary,
    Dense,
    ExpandDims,
    MatMul,
    OpBase,
    Reduce,
    Reshape,
    Softmax,
    Transpose,
)

__all__ = ["MASK_VALUE"]

#: What Keras adds where attention is masked (its ``_large_negative_number`` for float32).
MASK_VALUE = -1e9

TENSOR_KWARGS.update({"MultiHeadAttention": ("value", "key", "attention_mask"),
                      "GroupedQueryAttention": ("value", "key", "attention_mask"),
                      "GroupQueryAttention": ("value", "key", "attention_mask"),
                      "Attention": (), "AdditiveAttention": ()})
MULTI_INPUT_LAYERS.update({"MultiHeadAttention", "GroupedQueryAttention", "GroupQueryAttention", "Attention", "AdditiveAttention", "Dot"})


def node(ctx: LayerContext, op: OpBase, *inputs: str, suffix: str | None) -> str:
    """Emit ``op`` on ``inputs`` (any values, not only the current one)."""
    ctx.x, ctx.x_type = inputs[0], ctx.type_of(inputs[0])
    return ctx.emit(op, *inputs[1:], suffix=suffix)


def _weight(ctx: LayerContext, subs: tuple[str, ...], var: str, index: int) -> np.ndarray:
    for sub in subs:
        for name in (f"{sub}/{var}", f"{sub}/var{index}"):
            w = ctx.layer.weight(name)
            if w is not None:
                return np.asarray(w, dtype=np.float64)
    ctx.refuse(f"missing weight {subs[0]}/{var} (layer has {list(ctx.layer.weight_names)})")
    raise Unconvertible


_SUBS = {"query": ("query", "query_dense", "_query_dense"), "key": ("key", "key_dense", "_key_dense"),
         "value": ("value", "value_dense", "_value_dense"),
         "output": ("attention_output", "output_dense", "_output_dense")}


def _project(ctx: LayerContext, x: str, part: str, heads: int, size: int, use_bias: bool, tag: str) -> str:
    """``x`` (B, T, D) through Keras's EinsumDense ``abc,cde->abde``, as (B, heads, T, size)."""
    kernel = _weight(ctx, _SUBS[part], "kernel", 0)
    dim = ctx.type_of(x).shape[-1]
    if kernel.shape != (dim, heads, size):
        ctx.refuse(f"{part} kernel has shape {list(kernel.shape)}, expected {[dim, heads, size]}")
        raise Unconvertible
    ins = [ctx.add_constant(f"{tag}.kernel", kernel.reshape(dim, heads * size))]
    if use_bias:
        ins.append(ctx.add_constant(f"{tag}.bias", _weight(ctx, _SUBS[part], "bias", 1).reshape(heads * size)))
    y = node(ctx, Dense(), x, *ins, suffix=tag)
    t = ctx.type_of(x).shape[1]
    y = node(ctx, Reshape(shape=(t, heads, size)), y, suffix=f"{tag}.heads")
    return node(ctx, Transpose(perm=(0, 2, 1, 3)), y, suffix=f"{tag}.bhtd")


def _check_rank3(ctx: LayerContext, names: dict[str, str], higher: bool = False) -> None:
    """(batch, steps, features) operands with static steps and features; ``higher``: any rank >= 3 (attention
    over every axis between the batch and the features, MultiHeadAttention's default)."""
    for what, name in names.items():
        t = ctx.type_of(name)
        if t is None:
            ctx._input_unknown = True
            raise Unconvertible
        if t.rank < 3 or (t.rank != 3 and not higher) or not all(isinstance(d, int) for d in t.shape[1:]):
            ctx.refuse(f"{what} has shape {list(t.shape)}; keydnn supports (batch, steps..., features) with static "
                       "steps and features", field="attention_axes",
                       supported="rank >= 3 query/key/value (MultiHeadAttention), rank 3 (the other attention layers)")
            raise Unconvertible


def _flatten_steps(ctx: LayerContext, name: str, what: str) -> str:
    """(B, S1, ..., Sk, C) -> (B, S1*...*Sk, C): attention over every middle axis at once is attention over their
    flattening (Keras's softmax runs over all key axes jointly)."""
    shape = ctx.type_of(name).shape
    if len(shape) == 3:
        return name
    return node(ctx, Reshape(shape=(int(np.prod(shape[1:-1])), shape[-1])), name, suffix=f"{what}.steps")


def _kwargs(ctx: LayerContext, allowed: dict[str, tuple]) -> dict:
    """The call's plain keyword arguments, each checked against its allowed values."""
    out = {}
    for key, value in ctx.call_kwargs.items():  # type: ignore[attr-defined]
        if key in ("value", "key", "attention_mask") and isinstance(value, str):
            continue
        if key not in allowed or value not in allowed[key]:
            ctx.refuse(f"unsupported call argument {key}={value!r}", field=key, value=value,
                       supported=", ".join(f"{k} in {list(v)}" for k, v in allowed.items()))
            raise Unconvertible
        out[key] = value
    return out


def _mask_bias(ctx: LayerContext, scores: str, mask: str | None, causal: bool, tq: int, tk: int) -> str:
    """scores (B, H, Tq, Tk) + MASK_VALUE where the attention_mask is 0 or the causal mask hides a key."""
    if causal:
        bias = np.where(np.tril(np.ones((tq, tk), dtype=bool)), 0.0, MASK_VALUE)
        scores = node(ctx, Binary(function="add"), scores, ctx.add_constant("causal_bias", bias), suffix="causal")
    if mask is not None:
        mt = ctx.type_of(mask)
        if mt is None or tuple(mt.shape[1:]) != (tq, tk):
            ctx.refuse(f"attention_mask has shape {None if mt is None else list(mt.shape)}, expected "
                       f"[batch, {tq}, {tk}]", field="attention_mask")
            raise Unconvertible
        keep = node(ctx, Binary(function="not_equal"), mask, ctx.add_constant("mask_zero", np.zeros(1)), suffix="keep")
        off = node(ctx, Binary(function="sub"), keep, ctx.add_constant("mask_one", np.ones(1)), suffix="masked")
        bias = node(ctx, Binary(function="mul"), off, ctx.add_constant("mask_large", np.array([-MASK_VALUE])),
                    suffix="mask_bias")
        bias = node(ctx, ExpandDims(axis=1), bias, suffix="mask_heads")
        scores = node(ctx, Binary(function="add"), scores, bias, suffix="mask")
    return scores


def _attend(ctx: LayerContext, q: str, k: str, v: str, scale: float, mask: str | None, causal: bool) -> str:
    """softmax(q @ k^T * scale + masks) @ v over (B, H, T, d) operands; (B, H, Tq, dv)."""
    tq, tk = ctx.type_of(q).shape[2], ctx.type_of(k).shape[2]
    scores = node(ctx, MatMul(transpose_b=True, scale=scale), q, k, suffix="scores")
    scores = _mask_bias(ctx, scores, mask, causal, tq, tk)
    probs = node(ctx, Softmax(axis=-1), scores, suffix="probs")
    return node(ctx, MatMul(), probs, v, suffix="context")


def _heads_out(ctx: LayerContext, context: str, heads: int, vdim: int, out_dims: tuple[int, ...],
               use_bias: bool, steps: tuple[int, ...] | None = None) -> None:
    """(B, H, T, vdim) -> (B, T, H * vdim) -> output EinsumDense ``abcd,cde->abe``; ``steps``: the query's
    middle axes when it had several (the result is reshaped back to them)."""
    t = ctx.type_of(context).shape[2]
    y = node(ctx, Transpose(perm=(0, 2, 1, 3)), context, suffix="bthd")
    y = node(ctx, Reshape(shape=(t, heads * vdim)), y, suffix="merge_heads")
    kernel = _weight(ctx, _SUBS["output"], "kernel", 0)
    width = int(np.prod(out_dims))
    if kernel.shape != (heads, vdim) + out_dims:
        ctx.refuse(f"output kernel has shape {list(kernel.shape)}, expected {[heads, vdim, *out_dims]}")
        raise Unconvertible
    ins = [ctx.add_constant("output.kernel", kernel.reshape(heads * vdim, width))]
    if use_bias:
        ins.append(ctx.add_constant("output.bias", _weight(ctx, _SUBS["output"], "bias", 1).reshape(width)))
    reshaped = len(out_dims) > 1 or steps is not None
    y = node(ctx, Dense(), y, *ins, suffix="output" if reshaped else None)
    if reshaped:
        node(ctx, Reshape(shape=(steps or (t,)) + out_dims), y, suffix=None)


def _common_config(ctx: LayerContext) -> bool:
    check_dtype_policy(ctx)
    ctx.ignore("dropout")  # training only
    use_gate = ctx.check_in("use_gate", (False, True), False)
    if use_gate:
        ctx.refuse("unsupported use_gate True", field="use_gate", value=True, supported="False")
    window = ctx.cfg("sliding_window")
    if window is not None:
        ctx.refuse(f"unsupported sliding_window {window!r}", field="sliding_window", value=window, supported="None")
    ctx.ignore("query_shape", "key_shape", "value_shape", "softmax_robust_masking", "flash_attention")
    return bool(ctx.check_in("use_bias", (True, False), True))


def _attention_call(ctx: LayerContext, higher: bool = False) -> tuple[str, str, str, str | None, dict]:
    """The query, value, key and attention-mask values of a MultiHeadAttention / GroupQueryAttention call
    (positional or keyword; key defaults to value), and its checked keyword options."""
    kw = ctx.call_kwargs  # type: ignore[attr-defined]
    inputs = ctx.inputs  # type: ignore[attr-defined]
    n_kw = sum(1 for k in ("value", "key", "attention_mask") if isinstance(kw.get(k), str))
    positional = list(inputs[: len(inputs) - n_kw])
    query = positional[0]
    value = kw.get("value") if isinstance(kw.get("value"), str) else (positional[1] if len(positional) > 1 else None)
    key = kw.get("key") if isinstance(kw.get("key"), str) else (positional[2] if len(positional) > 2 else value)
    mask = kw.get("attention_mask") if isinstance(kw.get("attention_mask"), str) else None
    if value is None:
        ctx.refuse("called without a value tensor", field="inputs")
        raise Unconvertible
    opts = _kwargs(ctx, {"use_causal_mask": (True, False), "training": (None, False),
                         "return_attention_scores": (False,), "query_mask": (None,), "value_mask": (None,),
                         "key_mask": (None,)})
    _check_rank3(ctx, {"query": query, "value": value, "key": key}, higher)
    return query, value, key, mask, opts


@register_converter("MultiHeadAttention", constraints=(
    "self and cross attention on (batch, steps..., features) tensors: num_heads, key_dim, value_dim, output_shape, "
    "use_bias, attention_axes default (every axis between batch and features), key, attention_mask input "
    "(0 masks), use_causal_mask (rank 3); lowered to dense projections, matmul, softmax and matmul"))
def convert_mha(ctx: LayerContext) -> None:
    use_bias = _common_config(ctx)
    heads, kdim = ctx.cfg("num_heads"), ctx.cfg("key_dim")
    vdim = ctx.cfg("value_dim") or kdim
    axes = ctx.cfg("attention_axes")
    out_cfg = ctx.cfg("output_shape")
    if not all(is_int(v) and v > 0 for v in (heads, kdim, vdim)):
        ctx.refuse(f"invalid num_heads/key_dim/value_dim {heads!r}/{kdim!r}/{vdim!r}", field="num_heads")
        raise Unconvertible
    query, value, key, mask, opts = _attention_call(ctx, higher=True)
    qshape = ctx.type_of(query).shape
    rank = len(qshape)
    middle = list(range(1, rank - 1))
    if axes is not None and sorted(a % rank for a in axes) != middle:
        ctx.refuse(f"unsupported attention_axes {axes!r} for a rank-{rank} query", field="attention_axes",
                   value=axes, supported=f"None or every axis between batch and features ({middle})")
        raise Unconvertible
    if rank > 3 and opts.get("use_causal_mask"):
        ctx.refuse("use_causal_mask on a query of rank > 3 (Keras builds the causal mask over axis 1 only)",
                   field="use_causal_mask", value=True, supported="use_causal_mask with rank-3 inputs")
        raise Unconvertible
    if rank > 3:  # attention over all middle axes jointly = attention over their flattening
        query, key, value = (_flatten_steps(ctx, query, "query"), _flatten_steps(ctx, key, "key"),
                             _flatten_steps(ctx, value, "value"))
        if mask is not None:
            mt = ctx.type_of(mask)
            tq, tk = ctx.type_of(query).shape[1], ctx.type_of(key).shape[1]
            if mt is None or int(np.prod(mt.shape[1:])) != tq * tk:
                ctx.refuse(f"attention_mask has shape {None if mt is None else list(mt.shape)}, expected the query "
                           "steps then the key steps", field="attention_mask")
                raise Unconvertible
            mask = node(ctx, Reshape(shape=(tq, tk)), mask, suffix="mask.steps")
    dim = qshape[-1]
    out_dims = (dim,) if out_cfg is None else (out_cfg,) if is_int(out_cfg) else tuple(out_cfg)
    if not all(is_int(d) and d > 0 for d in out_dims):
        ctx.refuse(f"unsupported output_shape {out_cfg!r}", field="output_shape", value=out_cfg)
        raise Unconvertible
    q = _project(ctx, query, "query", heads, kdim, use_bias, "query")
    k = _project(ctx, key, "key", heads, kdim, use_bias, "key")
    v = _project(ctx, value, "value", heads, vdim, use_bias, "value")
    context = _attend(ctx, q, k, v, 1.0 / math.sqrt(kdim), mask, bool(opts.get("use_causal_mask", False)))
    _heads_out(ctx, context, heads, vdim, out_dims, use_bias, tuple(qshape[1:-1]) if rank > 3 else None)


@register_converter("GroupQueryAttention", constraints=(
    "(batch, steps, features) tensors: head_dim, num_query_heads, num_key_value_heads (key/value heads repeated "
    "across query groups), use_bias, attention_mask input, use_causal_mask"))
def convert_gqa(ctx: LayerContext) -> None:
    """(Its class is GroupedQueryAttention; ``.keras`` archives record the export name GroupQueryAttention.)"""
    use_bias = _common_config(ctx)
    hd, nq, nkv = ctx.cfg("head_dim"), ctx.cfg("num_query_heads"), ctx.cfg("num_key_value_heads")
    if not all(is_int(v) and v > 0 for v in (hd, nq, nkv)) or nq % nkv:
        ctx.refuse(f"invalid head_dim/num_query_heads/num_key_value_heads {hd!r}/{nq!r}/{nkv!r}",
                   field="num_key_value_heads")
        raise Unconvertible
    query, value, key, mask, opts = _attention_call(ctx)
    q = _project(ctx, query, "query", nq, hd, use_bias, "query")
    k = _project(ctx, key, "key", nkv, hd, use_bias, "key")
    v = _project(ctx, value, "value", nkv, hd, use_bias, "value")
    if nq != nkv:  # repeat each key/value head for its group of query heads: (B, nkv, S, d) -> (B, nq, S, d)
        s = ctx.type_of(k).shape[2]
        rep = nq // nkv
        ones = ctx.add_constant("repeat", np.ones((1, 1, rep, 1, 1)))
        k = node(ctx, ExpandDims(axis=2), k, suffix="key.group")
        k = node(ctx, Binary(function="mul"), k, ones, suffix="key.repeat")
        k = node(ctx, Reshape(shape=(nq, s, hd)), k, suffix="key.heads_q")
        v = node(ctx, ExpandDims(axis=2), v, suffix="value.group")
        v = node(ctx, Binary(function="mul"), v, ones, suffix="value.repeat")
        v = node(ctx, Reshape(shape=(nq, s, hd)), v, suffix="value.heads_q")
    context = _attend(ctx, q, k, v, 1.0 / math.sqrt(hd), mask, bool(opts.get("use_causal_mask", False)))
    _heads_out(ctx, context, nq, hd, (ctx.type_of(query).shape[-1],), use_bias)


def _attention_call_kwargs(ctx: LayerContext) -> dict:
    return _kwargs(ctx, {"use_causal_mask": (True, False), "training": (None, False),
                         "return_attention_scores": (False,), "mask": (None, [None, None], [None, None, None])})


register_converter("GroupedQueryAttention", constraints="as GroupQueryAttention (the class's own name, which "
                   "live models and .h5 files record)")(convert_gqa)


def _qvk(ctx: LayerContext) -> tuple[str, str, str]:
    inputs = list(ctx.inputs)  # type: ignore[attr-defined]
    if len(inputs) not in (2, 3):
        ctx.refuse(f"takes [query, value] or [query, value, key], got {len(inputs)} tensors", field="inputs")
        raise Unconvertible
    _check_rank3(ctx, dict(zip(("query", "value", "key"), inputs)))
    return inputs[0], inputs[1], inputs[2] if len(inputs) == 3 else inputs[1]


@register_converter("Attention", constraints=(
    "[query, value(, key)] of rank 3: score_mode 'dot' / 'concat', use_scale (its learned scale), "
    "use_causal_mask; no masks"))
def convert_attention(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    ctx.ignore("dropout")
    mode = ctx.check_in("score_mode", ("dot", "concat"), "dot")
    use_scale = ctx.check_in("use_scale", (False, True), False)
    causal = ctx.check_in("causal", (False, True), False)  # Keras 2's constructor flag
    causal = bool(_attention_call_kwargs(ctx).get("use_causal_mask", False)) or causal
    q, v, k = _qvk(ctx)
    tq, tk = ctx.type_of(q).shape[1], ctx.type_of(k).shape[1]
    weights = dict(ctx.layer.weights)
    pos = iter(("var0", "var1"))
    scale = float(np.asarray(weights.get("scale", weights.get(next(pos)))).reshape(-1)[0]) if use_scale else None
    if mode == "dot":
        scores = node(ctx, MatMul(transpose_b=True, scale=1.0 if scale is None else scale), q, k, suffix="scores")
    else:
        outer = float(np.asarray(weights.get("concat_score_weight", weights.get(next(pos)))).reshape(-1)[0])
        scores = _additive_scores(ctx, q, k, inner=scale, per_feature=None, outer=outer)
    if causal:
        scores = _mask_bias(ctx, scores, None, True, tq, tk)
    probs = node(ctx, Softmax(axis=-1), scores, suffix="probs")
    node(ctx, MatMul(), probs, v, suffix=None)


def _additive_scores(ctx: LayerContext, q: str, k: str, *, inner: float | None, per_feature: np.ndarray | None,
                     outer: float) -> str:
    """outer * sum(per_feature * tanh(inner * (q[:, :, None] + k[:, None])), -1): Keras's Attention 'concat'
    (inner, outer) and AdditiveAttention (per_feature) scores."""
    qe = node(ctx, ExpandDims(axis=2), q, suffix="q_rows")
    ke = node(ctx, ExpandDims(axis=1), k, suffix="k_cols")
    s = node(ctx, Binary(function="add"), qe, ke, suffix="pairs")
    if inner is not None:
        s = node(ctx, Binary(function="mul"), s, ctx.add_constant("scale", np.array([inner])), suffix="scaled")
    s = node(ctx, Activation(function="tanh"), s, suffix="tanh")
    if per_feature is not None:
        s = node(ctx, Binary(function="mul"), s, ctx.add_constant("scale", per_feature.reshape(-1)),
                 suffix="weighted")
    s = node(ctx, Reduce(mode="sum", axes=(3,)), s, suffix="scores")
    if outer != 1.0:
        s = node(ctx, Binary(function="mul"), s, ctx.add_constant("concat_score", np.array([outer])),
                 suffix="score_weight")
    return s


@register_converter("AdditiveAttention", constraints=(
    "[query, value(, key)] of rank 3: use_scale (its learned per-feature scale), use_causal_mask; no masks"))
def convert_additive(ctx: LayerContext) -> None:
    check_dtype_policy(ctx)
    ctx.ignore("dropout")
    use_scale = ctx.check_in("use_scale", (True, False), True)
    causal = ctx.check_in("causal", (False, True), False)
    causal = bool(_attention_call_kwargs(ctx).get("use_causal_mask", False)) or causal
    q, v, k = _qvk(ctx)
    tq, tk = ctx.type_of(q).shape[1], ctx.type_of(k).shape[1]
    weights = dict(ctx.layer.weights)
    scale = np.asarray(weights.get("scale", weights.get("var0")), dtype=np.float64) if use_scale else None
    scores = _additive_scores(ctx, q, k, inner=None, per_feature=scale, outer=1.0)
    if causal:
        scores = _mask_bias(ctx, scores, None, True, tq, tk)
    probs = node(ctx, Softmax(axis=-1), scores, suffix="probs")
    node(ctx, MatMul(), probs, v, suffix=None)
