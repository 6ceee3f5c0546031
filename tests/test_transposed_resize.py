"""Transposed and 1-D convolutions, interpolating resizes (issue 18): parity with Keras from every source
form, and the U-Net of the done-when list (Conv2DTranspose + skip concatenations)."""

from __future__ import annotations

import pytest
from issue18_helpers import all_sources, check_parity, k3_sources

import keydnn

pytestmark = pytest.mark.keras
CL, CF = "channels_last", "channels_first"


def _seq(shape, *layers):
    def build(k):
        return k.Sequential([k.layers.Input(shape=shape), *(make(k.layers) for make in layers)])
    return build


CASES = {
    "conv2d_transpose": _seq(
        (5, 6, 3), lambda L: L.Conv2DTranspose(4, 3, strides=2, padding="same"),
        lambda L: L.Conv2DTranspose(3, 3, strides=2),
        lambda L: L.Conv2DTranspose(4, (2, 3), strides=(2, 1), padding="same", output_padding=(1, 0)),
        lambda L: L.Conv2DTranspose(2, 4, strides=3, output_padding=1, use_bias=False),
        lambda L: L.Conv2DTranspose(3, 3, dilation_rate=2, padding="same"),
        lambda L: L.Conv2DTranspose(2, 4, strides=2, padding="same")),
    "conv1d_transpose": _seq(
        (7, 3), lambda L: L.Conv1DTranspose(4, 3, strides=2, padding="same"),
        lambda L: L.Conv1DTranspose(3, 4, strides=2, output_padding=1),
        lambda L: L.Conv1DTranspose(2, 3, dilation_rate=2)),
    "conv1d_depthwise_separable": _seq(
        (9, 4), lambda L: L.DepthwiseConv1D(3, depth_multiplier=2, padding="same"),
        lambda L: L.SeparableConv1D(5, 3, strides=2, depth_multiplier=2),
        lambda L: L.DepthwiseConv1D(2, dilation_rate=2, use_bias=False),
        lambda L: L.SeparableConv1D(3, 2, padding="same", use_bias=False)),
    "upsampling_interpolations": _seq(
        (5, 6, 3), lambda L: L.UpSampling2D(2, interpolation="bilinear"),
        lambda L: L.UpSampling2D((1, 3), interpolation="bicubic"), lambda L: L.Conv2D(2, 3),
        lambda L: L.UpSampling2D(2, interpolation="nearest")),
}
CF_CASES = {
    "conv2d_transpose_cf": _seq(
        (3, 5, 6), lambda L: L.Conv2DTranspose(4, 3, strides=2, padding="same", data_format=CF),
        lambda L: L.Conv2DTranspose(2, 2, strides=2, data_format=CF)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_every_source_form(case, keras_sources):
    check_parity(keras_sources(f"i18_{case}", CASES[case]))


@pytest.mark.parametrize("case", sorted(CF_CASES))
def test_channels_first_keras3(case, tmp_path):
    """tf_keras cannot run channels_first convolutions on the CPU; Keras 3 runs these (XLA-free) kernels."""
    check_parity(k3_sources(tmp_path, case, CF_CASES[case]))


def unet(k, size=32, width=8):
    """A small U-Net: two downsampling stages, Conv2DTranspose upsampling, skip concatenations."""
    L = k.layers
    x = k.Input((size, size, 3))
    c1 = L.Conv2D(width, 3, padding="same", activation="relu")(x)
    p1 = L.MaxPooling2D()(c1)
    c2 = L.Conv2D(2 * width, 3, padding="same", activation="relu")(p1)
    p2 = L.MaxPooling2D()(c2)
    b = L.Conv2D(4 * width, 3, padding="same", activation="relu")(p2)
    u2 = L.Conv2DTranspose(2 * width, 2, strides=2, padding="same")(b)
    c3 = L.Conv2D(2 * width, 3, padding="same", activation="relu")(L.Concatenate()([u2, c2]))
    u1 = L.Conv2DTranspose(width, 2, strides=2, padding="same")(c3)
    c4 = L.Conv2D(width, 3, padding="same", activation="relu")(L.Concatenate()([u1, c1]))
    return k.Model(x, L.Conv2D(2, 1, activation="sigmoid")(c4))


def test_unet_every_source_form(tmp_path):
    """Issue 18's done-when U-Net (CPU), from every source form; no transposes inside (channels-first)."""
    sources = all_sources(tmp_path, "unet", unet)
    check_parity(sources, allow_non_linear_activation=True)
    kinds = [n.op.kind for n in keydnn.from_keras(sources[0][1], allow_non_linear_activation=True).graph.nodes]
    assert kinds.count("transpose") == 2 and kinds.count("dilate_pad2d") == 2, kinds


def test_refusals_are_named():
    import tensorflow as tf
    L = tf.keras.layers
    model = tf.keras.Sequential([L.Input((4, 4, 3)), L.UpSampling2D(interpolation="lanczos3"),
                                 L.Conv2DTranspose(2, 3, dtype="mixed_float16")])
    with pytest.raises(keydnn.KerasInteropError) as info:
        keydnn.from_keras(model)
    assert {(p.layer_class, p.field) for p in info.value.problems} >= {("UpSampling2D", "interpolation")}
