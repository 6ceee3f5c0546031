"""Keras 3 operations as graph nodes (issue 18): an allow-list mapped onto IR ops, the same deliberate result
from ``.keras`` and ``.h5`` (an operation is never converted as the layer sharing its class name), and
refusals that name the operation."""

from __future__ import annotations

import numpy as np
import pytest
from parity_helpers import check_parity, k3_sources

import keydnn

pytestmark = pytest.mark.keras


def _ops_model(k):
    from keras import ops
    x = k.Input((4, 6))
    a = k.layers.Dense(6)(x)
    b = a * 0.5 + 3.0
    c = ops.softmax(b, axis=1)
    d = ops.maximum(c, a)
    e = a - d
    f = ops.concatenate([e, a], axis=-1)
    g = ops.mean(f, axis=-1, keepdims=True)
    h = f[:, 1:3, ::2]
    i = ops.hard_silu(k.activations.relu(h))
    j = ops.reshape(i, (-1, 12))
    m = ops.matmul(h, ops.transpose(h, (0, 2, 1)))
    n = ops.cast(2.0 / (1.0 + ops.exp(-m)) > 0.5, "float32")
    return k.Model(x, [g, j, n])


def _math_model(k):
    from keras import ops
    x = k.Input((4, 6))
    outs = [
        ops.sqrt(ops.abs(x)), ops.square(x), ops.log(ops.abs(x) + 1), ops.clip(x, -1, 1), ops.minimum(x, 0.5),
        ops.sum(x, axis=[1, 2]), ops.max(x, axis=1), ops.min(x, axis=-1, keepdims=True),
        ops.squeeze(ops.expand_dims(x, -1), axis=-1), ops.stack([x, 2 * x], axis=1), ops.sigmoid(x),
        ops.relu(x), ops.tanh(x), ops.gelu(x), ops.gelu(x, approximate=False), ops.silu(x), ops.leaky_relu(x, 0.1),
        ops.elu(x, 0.5), ops.relu6(x * 4), ops.hard_sigmoid(x), ops.log_softmax(x, axis=-1), ops.softplus(x),
        ops.selu(x), ops.celu(x, 2.0), k.activations.gelu(x), k.activations.softmax(x, axis=1), x ** 2, x / 3.0,
        ops.cast(x >= 0.1, "float32"), ops.power(ops.abs(x), 3), ops.negative(x), ops.rsqrt(ops.abs(x) + 1),
        x[:, 0], x[:, -2:, 3], ops.cast(ops.equal(x, x), "float32"), ops.hard_swish(x), ops.sparse_plus(x),
        ops.squareplus(x, 2), ops.softsign(x), ops.exp(x), ops.reshape(x, (-1, 2, 12)), ops.maximum(x, 0.0),
        ops.divide(x, 2.0), ops.multiply(2.0, x), ops.add(x, x), ops.subtract(1.0, x), ops.matmul(x, np.ones((6, 2))),
        ops.expand_dims(x, 1) * ops.ones((1, 1, 1, 6)),
    ]
    return k.Model(x, outs)


def _conv_ops_model(k):
    """A channels_last conv net with MobileNetV3-style operations (x * relu6(x + 3) / 6): the layout pass keeps
    them channels-first, between convolutions."""
    from keras import ops
    x = k.Input((8, 8, 3))
    y = k.layers.Conv2D(8, 3, padding="same")(x)
    y = y * k.layers.ReLU(6.0)(y + 3.0) * (1.0 / 6.0)
    s = ops.mean(y, axis=[1, 2], keepdims=True)
    y = k.layers.Conv2D(8, 1)(y * ops.sigmoid(s))
    z = k.layers.Conv2D(8, 3, padding="same")(x)
    return k.Model(x, k.layers.GlobalAveragePooling2D()(ops.maximum(y, z) - z))


@pytest.mark.parametrize("build", [_ops_model, _math_model, _conv_ops_model], ids=lambda b: b.__name__[1:])
def test_parity_keras3_forms(build, tmp_path):
    check_parity(k3_sources(tmp_path, build.__name__, build))


def test_keras_and_h5_give_the_same_graph(tmp_path):
    """`.h5` records no module: ops.softmax / ops.maximum / a - b / ops.concatenate must not become the layers
    Softmax / Maximum / Subtract / Concatenate there (the bug of issue 18); both files give one IR."""
    sources = k3_sources(tmp_path, "same", _ops_model)
    graphs = [str(keydnn.from_keras(src, passes="infer-shapes").graph).splitlines() for _, src, _ in sources[1:]]
    same = [line for line in graphs[0] if "keras3-zip" not in line]  # the header names the source format
    assert same == [line for line in graphs[1] if "keras3-h5" not in line]
    kinds = [n.op.kind for n in keydnn.from_keras(sources[2][1], passes="infer-shapes").graph.nodes]
    assert kinds.count("binary") >= 5 and "softmax" in kinds


def test_conv_ops_stay_channels_first(tmp_path):
    (_, live, _), *_ = k3_sources(tmp_path, "conv_ops", _conv_ops_model)
    kinds = [n.op.kind for n in keydnn.from_keras(live).graph.nodes]
    assert kinds.count("transpose") <= 1, kinds


def test_unsupported_operations_are_named(tmp_path):
    import tensorflow as tf
    from keras import ops
    k = tf.keras
    x = k.Input((4, 6))
    model = k.Model(x, [ops.argsort(x, axis=-1), ops.mean(x), ops.reshape(x, (3, -1)), x[0]])
    with pytest.raises(keydnn.KerasInteropError) as info:
        keydnn.from_keras(model)
    problems = {p.layer_class: p for p in info.value.problems}
    assert "Argsort" in problems and "not supported" in problems["Argsort"].message
    assert problems["Mean"].field == "axis"
    assert problems["Reshape"].field == "newshape"
    assert "batch axis" in problems["GetItem"].message
    assert len(info.value.problems) == 4


def test_lambda_stays_refused():
    import tensorflow as tf
    k = tf.keras
    model = k.Sequential([k.Input((3,)), k.layers.Lambda(lambda t: t * 2)])
    with pytest.raises(keydnn.KerasInteropError, match="Lambda"):
        keydnn.from_keras(model)


def _keras2_ops_model():
    import tensorflow as tf
    import tf_keras as k
    x = k.Input((4, 6))
    a = k.layers.Dense(6)(x)
    outs = [a * 0.5 + 3.0, tf.nn.relu(a), tf.nn.softmax(a, axis=1), tf.reduce_mean(a, axis=-1, keepdims=True),
            a[:, 1:3, ::2], tf.concat([a, x], axis=-1), tf.matmul(a, a, transpose_b=True), tf.maximum(a, 0.0),
            2.0 - a, tf.math.sqrt(tf.abs(a)), tf.reshape(a, (-1, 24)), tf.transpose(a, (0, 2, 1)),
            tf.expand_dims(a, 1), tf.cast(a > 0.1, tf.float32), tf.nn.sigmoid(a), tf.square(a), a / 3.0,
            tf.stack([a, a], axis=1), tf.clip_by_value(a, -1.0, 1.0), tf.squeeze(tf.expand_dims(a, -1), -1), a[:, 0]]
    return k.Model(x, outs)


def test_keras2_tf_op_layers(tmp_path):
    """Keras 2's TFOpLambda / SlicingOpLambda, from the live tf_keras model and its .h5."""
    from fixtures.make_fixtures import _quiet_save, randomize_weights
    live = _keras2_ops_model()
    randomize_weights(live, 0)
    path = tmp_path / "k2ops.h5"
    _quiet_save(live, path)
    check_parity([("live-tf_keras", live, live), ("keras2-h5", path, live)])


def test_unsupported_tf_function_is_named():
    import tensorflow as tf
    import tf_keras as k
    x = k.Input((4, 6))
    model = k.Model(x, tf.math.cumsum(x, axis=1))
    with pytest.raises(keydnn.KerasInteropError, match="math.cumsum"):
        keydnn.from_keras(model)
