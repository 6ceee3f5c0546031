"""Attention layers (issue 18): MultiHeadAttention (self/cross, value_dim, output_shape, use_bias, masks),
GroupQueryAttention, Attention, AdditiveAttention, Dot, EinsumDense: parity with Keras from every source form
they exist in, lowered to matmul/softmax nodes the passes see, and a transformer encoder with a causal mask."""

from __future__ import annotations

import numpy as np
import pytest
from parity_helpers import check_parity, inputs_for, k3_sources

import keydnn

pytestmark = pytest.mark.keras


def _cross_mha(k):
    x, y, m = k.Input((5, 8)), k.Input((7, 6)), k.Input((5, 7))
    a = k.layers.MultiHeadAttention(2, 4, value_dim=3, output_shape=10, name="cross")(x, y, attention_mask=m)
    b = k.layers.MultiHeadAttention(3, 2, use_bias=False, name="self")(a, a)
    c = k.layers.MultiHeadAttention(2, 3, name="kv")(b, y, y)
    return k.Model([x, y, m], c)


def _mask_inputs(model, batch=3):
    xs = inputs_for(model, batch)
    rng = np.random.default_rng(5)
    mask = (rng.random(xs[2].shape) > 0.3).astype("f4")
    mask[:, :, 0] = 1.0  # no fully masked row (Keras's two code paths disagree there)
    return xs[:2] + [mask]


def test_cross_attention_with_mask_every_source_form(keras_sources):
    sources = keras_sources("i18_cross_mha", _cross_mha)
    check_parity(sources, inputs=_mask_inputs(sources[0][2]))


def _encoder(k, causal=True, t=8, d=16):
    x = k.Input((t, d))
    h = k.layers.Dense(d)(x)
    a = k.layers.MultiHeadAttention(4, 4, name="mha")(h, h, use_causal_mask=causal)
    h = k.layers.LayerNormalization(epsilon=1e-6)(k.layers.Add()([h, a]))
    f = k.layers.Dense(32, activation="gelu")(h)
    f = k.layers.Dense(d)(f)
    h = k.layers.LayerNormalization(epsilon=1e-6)(k.layers.Add()([h, f]))
    return k.Model(x, k.layers.Dense(4)(h))


def test_transformer_encoder_with_causal_mask(keras_sources):
    """Issue 18's done-when model (CPU), from every source form."""
    check_parity(keras_sources("i18_encoder", _encoder), allow_non_linear_activation=True)


def test_causal_mask_changes_the_result(tmp_path):
    """A check that can fail: the causal model's first step ignores later steps, the plain one does not."""
    (_, live, _), *_ = k3_sources(tmp_path, "enc", _encoder)
    model = keydnn.from_keras(live, allow_non_linear_activation=True)
    x = inputs_for(live, 2)[0]
    y = x.copy()
    y[:, 1:] += 1.0
    np.testing.assert_allclose(model(x)[:, 0], model(y)[:, 0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(model(x)[:, 1], model(y)[:, 1])


def test_mha_lowering_is_visible_to_passes(keras_sources):
    (_, live, _), *_ = keras_sources("i18_encoder", _encoder)
    kinds = [n.op.kind for n in keydnn.from_keras(live, allow_non_linear_activation=True).graph.nodes]
    assert kinds.count("matmul") == 2 and kinds.count("layer_norm") == 2 and "opaque" not in kinds
    # the causal mask's add and the softmax are one node after fuse-masked-softmax (the scale is on the matmul)
    assert kinds.count("bias_softmax") == 1 and "softmax" not in kinds and "binary" not in kinds, kinds
    unfused = keydnn.from_keras(live, allow_non_linear_activation=True,
                                passes="infer-shapes,canonicalize-layout,fuse-activation")
    assert [n.op.kind for n in unfused.graph.nodes].count("softmax") == 1


def test_masked_softmax_fusion_keeps_numerics(keras_sources):
    """Cross attention with an attention_mask input and a causal self-attention: two biases fused."""
    import tensorflow as tf
    k = tf.keras
    x, m = k.Input((5, 8)), k.Input((5, 5))
    y = k.layers.MultiHeadAttention(2, 4)(x, x, attention_mask=m, use_causal_mask=True)
    model = k.Model([x, m], y)
    ours = keydnn.from_keras(model)
    node = next(n for n in ours.graph.nodes if n.op.kind == "bias_softmax")
    assert len(node.inputs) == 3  # scores, causal bias, attention_mask bias
    xs = inputs_for(model, 2)
    xs[1] = (np.random.default_rng(0).random(xs[1].shape) > 0.3).astype("f4")
    xs[1][:, :, 0] = 1.0
    np.testing.assert_allclose(ours(*xs), np.asarray(model(xs)), rtol=1e-4, atol=1e-4)


def _attention_layers(k):
    q, v = k.Input((5, 6)), k.Input((7, 6))
    a = k.layers.Attention()([q, v])
    b = k.layers.Attention(use_scale=True)([q, v, q[:, :, :] if False else v])
    c = k.layers.AdditiveAttention()([q, v])
    d = k.layers.AdditiveAttention(use_scale=False)([q, v])
    e = k.layers.Dot(axes=(2, 2))([q, v])
    f = k.layers.Dot(axes=1, normalize=True)([q, q])
    g = k.layers.Dot(axes=(1, 1))([k.layers.Flatten()(q), k.layers.Flatten()(q)])
    return k.Model([q, v], [a, b, c, d, e, f, g])


def test_attention_dot_every_source_form(keras_sources):
    check_parity(keras_sources("i18_attention", _attention_layers))


def _keras3_attention(k):
    q, v = k.Input((5, 6)), k.Input((7, 6))
    a = k.layers.Attention(use_scale=True, score_mode="concat")([q, v])
    b = k.layers.Attention()([q, q], use_causal_mask=True)
    c = k.layers.GroupQueryAttention(head_dim=3, num_query_heads=4, num_key_value_heads=2)(q, v)
    d = k.layers.GroupQueryAttention(head_dim=2, num_query_heads=2, num_key_value_heads=2, use_bias=False)(
        q, q, use_causal_mask=True)
    return k.Model([q, v], [a, b, c, d])


def test_keras3_only_attention(tmp_path):
    check_parity(k3_sources(tmp_path, "k3att", _keras3_attention))


def _einsum(k):
    x = k.Input((4, 6))
    a = k.layers.EinsumDense("abc,cd->abd", output_shape=(4, 5), bias_axes="d")(x)
    b = k.layers.EinsumDense("abc,cde->abde", output_shape=(4, 2, 3), bias_axes="de")(a)
    c = k.layers.EinsumDense("abcd,cde->abe", output_shape=(4, 7), bias_axes="e")(b)
    d = k.layers.EinsumDense("abc,bcd->ad", output_shape=(3,))(c)
    e = k.layers.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c")(d)
    return k.Model(x, [c, e])


def test_einsum_dense_every_source_form(keras_sources):
    check_parity(keras_sources("i18_einsum", _einsum))


def test_unsupported_einsum_and_mha_configs_are_named():
    import tensorflow as tf
    k = tf.keras
    x = k.Input((4, 6))
    a = k.layers.EinsumDense("abc,dc->abd", output_shape=(None, 5))(x)
    img = k.Input((4, 4, 6))
    b = k.layers.MultiHeadAttention(2, 3, attention_axes=(2,))(img, img)
    with pytest.raises(keydnn.KerasInteropError) as info:
        keydnn.from_keras(k.Model([x, img], [a, b]))
    fields = {p.layer_class: p.field for p in info.value.problems}
    assert fields == {"EinsumDense": "equation", "MultiHeadAttention": "attention_axes"}


def _image_mha(k):
    """MultiHeadAttention on rank-4 tensors (image-like): attention over both middle axes at once (Keras's default
    attention_axes, and the same given explicitly), cross attention with a rank-5 mask, output_shape."""
    x, y, m = k.Input((4, 5, 8)), k.Input((3, 2, 6)), k.Input((4, 5, 3, 2))
    a = k.layers.MultiHeadAttention(2, 4, value_dim=3, output_shape=7, name="cross4d")(x, y, attention_mask=m)
    b = k.layers.MultiHeadAttention(2, 3, attention_axes=(1, 2), name="self4d")(a, a)
    return k.Model([x, y, m], b)


def test_rank4_attention_over_every_middle_axis_every_source_form(keras_sources):
    sources = keras_sources("mha_rank4", _image_mha)
    xs = inputs_for(sources[0][2], 3)
    mask = (np.random.default_rng(2).random(xs[2].shape) > 0.3).astype("f4")
    mask[:, :, :, 0, 0] = 1.0  # no fully masked query position
    check_parity(sources, inputs=xs[:2] + [mask])


def test_attention_over_some_middle_axes_is_refused_by_name(tmp_path):
    def build(k):
        x = k.Input((4, 5, 8))
        return k.Model(x, k.layers.MultiHeadAttention(2, 4, attention_axes=(2,), name="axis2")(x, x))

    (_, live, _), *_ = k3_sources(tmp_path, "axes", build)
    with pytest.raises(keydnn.errors.KerasInteropError, match="attention_axes"):
        keydnn.from_keras(live)
