"""The issue's acceptance path: a text classifier and an encoder-decoder with states, saved as .keras and as .h5 by
both Keras versions, convert from the command line and match Keras on padded batches of two lengths."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import keydnn

pytestmark = [pytest.mark.keras, pytest.mark.slow]


def _classifier(k):
    L = k.layers
    inp = k.Input(shape=(None,), dtype="int32")
    x = L.Embedding(50, 8, mask_zero=True)(inp)
    x = L.Bidirectional(L.LSTM(6, return_sequences=True))(x)
    x = L.GRU(5)(x)
    return k.Model(inp, L.Dense(3)(x))


def _encoder_decoder(k):
    L = k.layers
    enc_in = k.Input(shape=(None,), dtype="int32")
    dec_in = k.Input(shape=(None,), dtype="int32")
    _, h, c = L.LSTM(6, return_state=True)(L.Embedding(40, 5, mask_zero=True)(enc_in))
    y = L.LSTM(6, return_sequences=True)(L.Embedding(40, 5)(dec_in), initial_state=[h, c])
    return k.Model([enc_in, dec_in], L.Dense(40)(y))


def _ids(rng, batch, steps, vocab, pad=True):
    x = rng.integers(1, vocab, size=(batch, steps)).astype("int32")
    if pad:
        x[0, steps // 2:] = 0
        x[1, :] = 0
    return x


@pytest.mark.parametrize("build", [_classifier, _encoder_decoder], ids=["classifier", "encoder_decoder"])
def test_convert_from_the_command_line(keras_sources, tmp_path, build) -> None:
    sources = keras_sources(f"cli_{build.__name__}", build)
    rng = np.random.default_rng(0)
    two_inputs = build is _encoder_decoder
    for form, src, live in sources:
        if not isinstance(src, (str, type(tmp_path))):
            continue  # live objects have no command line
        dst = tmp_path / f"{form}.json"
        proc = subprocess.run([sys.executable, "-m", "keydnn", "convert", "--src", str(src), "--dst", str(dst)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        model = keydnn.load(dst)
        for steps in (7, 4):
            feed = [_ids(rng, 3, steps, 40)] + ([_ids(rng, 3, steps + 2, 40, pad=False)] if two_inputs else [])
            want = np.asarray(live(feed if two_inputs else feed[0]))
            np.testing.assert_allclose(model(*feed), want, atol=1e-4, rtol=1e-4, err_msg=f"{form} length {steps}")


@pytest.mark.parametrize("build", [_classifier, _encoder_decoder], ids=["classifier", "encoder_decoder"])
def test_convert_verify_draws_token_ids_inside_the_vocabulary(keras_sources, tmp_path, build) -> None:
    """--verify's sample inputs for token-id inputs are ids of the table they index (not normal floats cast to
    int, which are negative half the time); the recorded vectors replay."""
    (_, _, _), (form, src, live), *_ = keras_sources(f"cli_{build.__name__}", build)
    dst = tmp_path / "v.json"
    proc = subprocess.run([sys.executable, "-m", "keydnn", "convert", "--src", str(src), "--dst", str(dst),
                           "--verify"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and "OK: max |keydnn - keras|" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "keydnn", "verify", str(dst)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = keydnn.load(dst).verification["inputs"]
    vocab = 50 if build is _classifier else 40
    assert all(x.dtype.kind == "i" and x.min() >= 0 and x.max() < vocab for x in recorded)
