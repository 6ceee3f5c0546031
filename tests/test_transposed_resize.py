"""Transposed and 1-D convolutions, interpolating resizes (issue 18): parity with Keras from every source
form, and the U-Net of the done-when list (Conv2DTranspose + skip concatenations)."""

from __future__ import annotations

import numpy as np
import pytest
from parity_helpers import all_sources, check_parity, k3_sources

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
    """Keras 3 only (tf_keras's channels_first transposed convolutions have no CPU kernel); Keras's output comes
    through keydnn.keras_runner (XLA), as on every CPU."""
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
    model = keydnn.from_keras(sources[0][1], allow_non_linear_activation=True)
    kinds = [n.op.kind for n in model.graph.nodes]
    assert kinds.count("transpose") == 2 and kinds.count("dilate_pad2d") == 2, kinds
    from keydnn.backends.numba_cpu.runtime.executable import try_codegen
    assert try_codegen(model.graph) is not None  # the whole U-Net runs as generated code


def test_refusals_are_named():
    import tensorflow as tf
    L = tf.keras.layers
    model = tf.keras.Sequential([L.Input((4, 4, 3)), L.UpSampling2D(interpolation="lanczos3"),
                                 L.Conv2DTranspose(2, 3, dtype="mixed_float16")])
    with pytest.raises(keydnn.KerasInteropError) as info:
        keydnn.from_keras(model)
    assert {(p.layer_class, p.field) for p in info.value.problems} >= {("UpSampling2D", "interpolation")}


PREPROCESSING = {
    "resizing": _seq((9, 7, 3), lambda L: L.Resizing(5, 6), lambda L: L.Resizing(8, 8, interpolation="nearest"),
                     lambda L: L.Resizing(6, 9, interpolation="bicubic"),
                     lambda L: L.Resizing(4, 4, crop_to_aspect_ratio=True), lambda L: L.CenterCrop(3, 2)),
}
K3_PREPROCESSING = {
    "resizing_pad": _seq((9, 7, 3), lambda L: L.Resizing(6, 9, pad_to_aspect_ratio=True, fill_value=0.5),
                         lambda L: L.Resizing(5, 5, interpolation="nearest", crop_to_aspect_ratio=True),
                         lambda L: L.CenterCrop(4, 3, data_format="channels_last")),
}


@pytest.mark.parametrize("case", sorted(PREPROCESSING))
def test_preprocessing_every_source_form(case, keras_sources):
    check_parity(keras_sources(f"i18_{case}", PREPROCESSING[case]))


@pytest.mark.parametrize("case", sorted(K3_PREPROCESSING))
def test_preprocessing_keras3(case, tmp_path):
    check_parity(k3_sources(tmp_path, case, K3_PREPROCESSING[case]))


def _random_layers(k):
    L = k.layers
    x = k.Input((8, 8, 3))
    y = x
    for make in (lambda: L.RandomFlip(), lambda: L.RandomRotation(0.2), lambda: L.RandomZoom(0.3),
                 lambda: L.RandomTranslation(0.1, 0.2), lambda: L.RandomContrast(0.5),
                 lambda: L.RandomCrop(8, 8)):  # (RandomBrightness: Keras 3 cannot save it to .h5)
        y = make()(y)
    return k.Model(x, L.Conv2D(2, 3)(y))


def test_random_layers_are_identities(keras_sources):
    sources = keras_sources("i18_random", _random_layers)
    check_parity(sources)
    kinds = [n.op.kind for n in keydnn.from_keras(sources[1][1]).graph.nodes]
    assert kinds.count("conv2d") == 1 and len(kinds) <= 3, kinds  # the conv and at most two boundary transposes


def test_every_keras3_random_layer_is_an_identity(tmp_path):
    """Each layer of RANDOM_IDENTITIES that Keras 3 has: Keras itself returns the input at inference."""
    import tensorflow as tf

    from keydnn.frontends.keras.convert_preprocessing import RANDOM_IDENTITIES
    k = tf.keras
    args = {"RandomRotation": (0.2,), "RandomZoom": (0.2,), "RandomTranslation": (0.1, 0.1),
            "RandomContrast": (0.2,), "RandomBrightness": (0.2,), "RandomHeight": (0.2,), "RandomWidth": (0.2,),
            "RandomHue": (0.2, (0, 1)), "RandomSaturation": (0.2,), "RandomSharpness": (0.2,),
            "RandomShear": (0.2,), "RandomColorJitter": ((0, 1),), "RandomColorDegeneration": (0.2,),
            "RandomPosterization": ((0, 255),), "RandomInvert": (), "RandomGaussianBlur": (),
            "RandomPerspective": (), "RandomElasticTransform": ()}
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("f4")
    checked = 0
    for name in RANDOM_IDENTITIES:
        cls = getattr(k.layers, name, None)
        if cls is None:
            continue
        try:
            layer = cls(*args.get(name, ()))
        except (TypeError, ValueError):
            layer = cls()
        inp = k.Input((8, 8, 3))
        model = k.Model(inp, layer(inp))
        np.testing.assert_array_equal(np.asarray(model(x, training=False)), x, err_msg=name)
        np.testing.assert_array_equal(keydnn.from_keras(model)(x), x, err_msg=name)
        checked += 1
    assert checked >= 20
