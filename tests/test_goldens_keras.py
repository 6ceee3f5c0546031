"""Golden IR snapshots of the frontend output and the pipeline output, paired with a numeric check.

The text is ``str(graph)``: stable names (explicit Keras layer names), types,
and weight checksums (not values). Every source form must give the same IR
(only the ``source_format`` metadata line differs). Regenerate with
``KEYDNN_UPDATE_GOLDENS=1 pytest tests/test_goldens_keras.py`` and review the diff.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import keydnn
from conftest import keras_predict
from passes.golden import assert_golden

pytestmark = pytest.mark.keras

GOLDENS = Path(__file__).resolve().parent / "goldens" / "keras"


def _seed(k):
    L = k.layers
    return k.Sequential([
        L.Input(shape=(1, 28, 28)),
        L.Conv2D(8, (3, 3), padding="same", data_format="channels_first", name="conv1"),
        L.ReLU(name="relu1"),
        L.MaxPooling2D((2, 2), data_format="channels_first", name="pool1"),
        L.Conv2D(16, (3, 3), padding="same", data_format="channels_first", name="conv2"),
        L.ReLU(name="relu2"),
        L.GlobalAveragePooling2D(data_format="channels_first", name="gap"),
        L.Flatten(name="flatten"),
        L.Dense(10, name="logits"),
        L.Softmax(axis=-1, name="probs"),
    ], name="seed")


def _strided(k):
    L = k.layers
    return k.Sequential([
        L.Input(shape=(3, 15, 12)),
        L.Conv2D(6, 4, strides=2, padding="same", use_bias=False, data_format="channels_first", name="conv_s2"),
        L.ReLU(max_value=6.0, name="relu6"),
        L.Conv2D(6, 3, dilation_rate=2, padding="same", data_format="channels_first", name="conv_dil"),
        L.MaxPooling2D(3, strides=2, padding="same", data_format="channels_first", name="pool_same"),
        L.Flatten(data_format="channels_first", name="flatten_cf"),
        L.Dense(5, name="head"),
    ], name="strided")


def _mlp(k):
    L = k.layers
    return k.Sequential([
        L.Input(shape=(20,)),
        L.Dense(16, activation="relu", name="fc1"),
        L.Dense(16, activation="tanh", name="fc2"),
        L.Dense(4, activation="softmax", name="out"),
    ], name="mlp")


CASES = {"seed": (_seed, {}), "strided": (_strided, {}), "mlp": (_mlp, {"allow_non_linear_activation": True})}


def _text(graph) -> str:
    return "".join(line for line in str(graph).splitlines(True) if not line.lstrip().startswith("meta source_format"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_frontend_and_pipeline_goldens(case, keras_sources):
    build, kwargs = CASES[case]
    sources = keras_sources(f"golden_{case}", build)
    texts = {}
    for form, src, live in sources:
        frontend = keydnn.from_keras(src, passes="", **kwargs)
        final = keydnn.from_keras(src, **kwargs)
        texts[form] = (_text(frontend.graph), _text(final.graph))
        x = np.random.default_rng(5).normal(size=(2,) + tuple(live.inputs[0].shape)[1:]).astype("f4")
        expected = keras_predict(live, x)
        np.testing.assert_allclose(keydnn.ir.run_reference(frontend.graph, x)[0], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(final(x), expected, rtol=1e-5, atol=1e-5)
    first = texts["keras3-h5"]
    for form, pair in texts.items():
        assert pair == first, f"{case}: IR from {form} differs from the IR of the Keras 3 .h5 file"
    assert_golden(first[0], GOLDENS / f"{case}.frontend.txt")
    assert_golden(first[1], GOLDENS / f"{case}.pipeline.txt")
