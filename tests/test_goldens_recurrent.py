"""Golden IR of an LSTM text classifier (frontend and pipeline), the same from every source form, paired with
a numeric check against Keras. Regenerate with ``KEYDNN_UPDATE_GOLDENS=1 pytest tests/test_goldens_recurrent.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import keydnn
from passes.golden import assert_golden

pytestmark = pytest.mark.keras

GOLDENS = Path(__file__).resolve().parent / "goldens" / "keras"


def _lstm_classifier(k):
    L = k.layers
    return k.Sequential([
        L.Input(shape=(None,), dtype="int32"),
        L.Embedding(100, 8, mask_zero=True, name="embed"),
        L.LSTM(6, return_sequences=True, name="lstm1"),
        L.LSTM(4, go_backwards=True, name="lstm2"),
        L.Dense(3, name="logits"),
    ], name="lstm_text")


def _text(graph) -> str:
    return "".join(line for line in str(graph).splitlines(True) if not line.lstrip().startswith("meta source_format"))


def test_lstm_text_classifier_goldens(keras_sources):
    sources = keras_sources("golden_lstm_text", _lstm_classifier)
    texts = {}
    x = np.random.default_rng(3).integers(1, 100, size=(3, 7)).astype("int32")
    x[0, 3:] = 0
    x[1, :] = 0
    for form, src, live in sources:
        frontend = keydnn.from_keras(src, passes="")
        final = keydnn.from_keras(src)
        texts[form] = (_text(frontend.graph), _text(final.graph))
        np.testing.assert_allclose(final(x), np.asarray(live(x)), atol=1e-4, rtol=1e-4, err_msg=form)
    first = texts["keras3-zip"]
    for form, pair in texts.items():
        assert pair == first, f"{form} lowers differently from keras3-zip"
    assert_golden(first[0], GOLDENS / "lstm_text.frontend.txt")
    assert_golden(first[1], GOLDENS / "lstm_text.pipeline.txt")
