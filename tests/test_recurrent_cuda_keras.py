"""The issue's done-when on the CUDA simulator: a text classifier and an encoder-decoder with states, saved as
.keras and as .h5 by both Keras versions, convert without TensorFlow in a simulator process and match Keras
within 1e-4 on padded batches of two lengths (one conversion per file)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.keras, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]

_SIMULATED = textwrap.dedent("""
    import sys
    import numpy as np
    import keydnn
    sys.setswitchinterval(1e-4)  # the simulator's barriers poll
    for path in sys.argv[1:]:
        data = np.load(path + ".npz")
        model = keydnn.from_keras(path, device="cuda")
        for k in range(2):
            feed = [data[f"x{k}_{i}"] for i in range(int(data["inputs"]))]
            got = model(*feed)
            np.testing.assert_allclose(got, data[f"y{k}"], rtol=1e-4, atol=1e-4, err_msg=f"{path} length {k}")
    assert not [m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules], "imported TensorFlow/Keras"
    print("sequence models on numba-cuda match Keras")
""")


def _classifier(k):
    L = k.layers
    inp = k.Input(shape=(None,), dtype="int32")
    x = L.Embedding(30, 6, mask_zero=True)(inp)
    x = L.Bidirectional(L.LSTM(4, return_sequences=True))(x)
    return k.Model(inp, L.Dense(3)(L.GRU(3)(x)))


def _encoder_decoder(k):
    L = k.layers
    enc_in = k.Input(shape=(None,), dtype="int32")
    dec_in = k.Input(shape=(None,), dtype="int32")
    _, h, c = L.LSTM(5, return_state=True)(L.Embedding(30, 4, mask_zero=True)(enc_in))
    y = L.LSTM(5, return_sequences=True)(L.Embedding(30, 4)(dec_in), initial_state=[h, c])
    return k.Model([enc_in, dec_in], L.TimeDistributed(L.Dense(30))(y))


def test_sequence_models_match_keras_on_the_simulator(keras_sources) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for build, n_inputs in ((_classifier, 1), (_encoder_decoder, 2)):
        for form, src, live in keras_sources(f"cuda_{build.__name__}", build):
            if not isinstance(src, Path):
                continue
            arrays: dict[str, np.ndarray] = {"inputs": np.array(n_inputs)}
            for k, steps in enumerate((6, 3)):
                feed = []
                for i in range(n_inputs):
                    x = rng.integers(1, 30, size=(3, steps + i)).astype("int32")
                    if i == 0:
                        x[0, steps // 2:] = 0
                        x[1, :] = 0
                    feed.append(x)
                    arrays[f"x{k}_{i}"] = x
                arrays[f"y{k}"] = np.asarray(live(feed if n_inputs > 1 else feed[0]))
            np.savez(str(src) + ".npz", **arrays)
            paths.append(str(src))
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-c", _SIMULATED, *paths], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert len(paths) == 6
