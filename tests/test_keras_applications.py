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
