"""keras.applications models: MobileNetV3Small (Keras operations as nodes,
hard_swish) and ConvNeXtTiny (LayerNormalization, LayerScale), built with weights=None at 64x64, weights
randomized, from the live model, ``.keras`` and ``.h5``: keydnn and the reference match Keras within 1e-4."""

from __future__ import annotations

import pytest
from parity_helpers import check_parity, k3_sources

pytestmark = [pytest.mark.keras, pytest.mark.slow]


def mobilenet_v3_small(k):
    return k.applications.MobileNetV3Small(input_shape=(64, 64, 3), weights=None, classes=10,
                                           classifier_activation=None)


def convnext_tiny(k):
    return k.applications.ConvNeXtTiny(input_shape=(64, 64, 3), weights=None, classes=10,
                                       classifier_activation=None)


@pytest.mark.parametrize("build", [mobilenet_v3_small, convnext_tiny], ids=lambda b: b.__name__)
def test_application_matches_keras(build, tmp_path):
    import numpy as np
    x = [np.random.default_rng(3).random((2, 64, 64, 3)).astype("f4") * 255]
    check_parity(k3_sources(tmp_path, build.__name__, build, scale=True), inputs=x,
                 allow_non_linear_activation=True)


#: Every keras.applications family of this Keras version (ResNetRS exists only in tf.keras 2.x), the smallest
#: member, at the smallest input each accepts (Inception and Xception need at least 75 and 71 pixels).
FAMILIES = {
    "DenseNet121": 64, "EfficientNetB0": 64, "EfficientNetV2B0": 64, "InceptionV3": 75, "InceptionResNetV2": 75,
    "MobileNet": 64, "MobileNetV2": 64, "MobileNetV3Large": 64, "NASNetMobile": 64, "ResNet50": 64,
    "ResNet50V2": 64, "VGG16": 64, "Xception": 71,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_application_family_matches_keras(family):
    """The live model (weights=None, BatchNorm statistics randomized so that folding is exercised) converts
    without flags beyond ``allow_non_linear_activation`` and matches Keras within 1e-4 on 2 images."""
    import keras
    import numpy as np

    import keydnn
    from keydnn.keras_runner import keras_outputs

    size = FAMILIES[family]
    keras.utils.set_random_seed(0)  # the same initial weights every run (unseeded, a rare draw exceeded 1e-4)
    model = getattr(keras.applications, family)(input_shape=(size, size, 3), weights=None, classes=10,
                                                classifier_activation=None)
    rng = np.random.default_rng(7)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            w = layer.get_weights()
            w[-2] = rng.normal(0, 0.1, w[-2].shape).astype("f4")
            w[-1] = rng.uniform(0.5, 1.5, w[-1].shape).astype("f4")
            layer.set_weights(w)
    x = rng.normal(size=(2, size, size, 3)).astype("f4")
    got = np.asarray(keydnn.from_keras(model, allow_non_linear_activation=True)(x))
    want = np.asarray(keras_outputs(model, [x])[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
