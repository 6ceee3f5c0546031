"""Every keras.activations entry converts or is refused by name: the newer Keras 3 activations
as Activation layers and fused activations, parity with Keras from each form that has them."""

from __future__ import annotations

import numpy as np
import pytest
from parity_helpers import check_parity, k3_sources

import keydnn
from keydnn.frontends.keras.activations import REFUSED_ACTIVATIONS, SUPPORTED_ACTIVATIONS

pytestmark = pytest.mark.keras

NEW = ("hard_silu", "hard_swish", "mish", "celu", "hard_tanh", "hard_shrink", "soft_shrink", "tanh_shrink",
       "log_sigmoid", "sparse_plus", "sparse_sigmoid", "squareplus", "log_softmax", "relu6")


def _activations(k):
    x = k.Input((5, 6))
    outs = [k.layers.Activation(name)(k.layers.Dense(6)(x)) for name in NEW]
    outs.append(k.layers.Dense(4, activation="mish")(x))
    outs.append(k.layers.Conv1D(4, 2, activation="log_softmax")(x))
    return k.Model(x, outs)


def test_keras3_activations(tmp_path):
    check_parity(k3_sources(tmp_path, "acts", _activations), inputs=[np.random.default_rng(2).normal(
        size=(3, 5, 6)).astype("f4") * 3], allow_non_linear_activation=True)


def test_keras2_mish(keras_sources):
    def build(k):
        return k.Sequential([k.layers.Input((7,)), k.layers.Dense(5, activation="mish"), k.layers.Activation("mish")])
    check_parity(keras_sources("i18_mish", build), allow_non_linear_activation=True)


def test_every_keras_activation_is_handled():
    """Each name keras.activations knows is either supported or refused by name (never unknown)."""
    from keras.src.activations import ALL_OBJECTS_DICT
    handled = set(SUPPORTED_ACTIVATIONS) | set(REFUSED_ACTIVATIONS) | {"linear"}
    assert set(ALL_OBJECTS_DICT) <= handled, sorted(set(ALL_OBJECTS_DICT) - handled)
    import tensorflow as tf
    model = tf.keras.Sequential([tf.keras.layers.Input((4,)), tf.keras.layers.Activation("sparsemax")])
    with pytest.raises(keydnn.KerasInteropError, match="sparsemax"):
        keydnn.from_keras(model)
