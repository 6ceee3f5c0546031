"""End to end: train the seed CNN in Keras, save .h5, convert with the CLI, check keydnn matches Keras.

Trains (channels_last, weights copied into the channels_first seed model, so
it trains on every CPU) on scikit-learn's handwritten digits upsampled to 28x28 (a local MNIST
copy is used when KEYDNN_MNIST points at one), saves the model as ``.h5``,
runs ``python -m keydnn convert --verify`` as a subprocess, loads the artifact
and compares predictions on the whole test split with Keras: the outputs must
agree within 1e-5 and the accuracy must be identical. Exits non-zero on any
mismatch. Needs TensorFlow (``pip install 'keydnn[keras]'``) and scikit-learn.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import keydnn  # noqa: E402
from make_seed_model import keras_predict, train_seed_model  # noqa: E402


def main() -> int:
    import tensorflow as tf

    start = time.perf_counter()
    keras_model, (_, _, x_test, y_test) = train_seed_model(tf.keras)
    train_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "seed_cnn.h5", Path(tmp) / "seed_cnn.json"
        keras_model.save(src)
        cmd = [sys.executable, "-m", "keydnn", "convert", "--src", str(src), "--dst", str(dst), "--verify"]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)  # not the source tree (see quickstart)
        print(proc.stderr.strip())
        if proc.returncode != 0:
            print(f"conversion failed with exit status {proc.returncode}")
            return 1
        model = keydnn.load(dst)
        replay = subprocess.run([sys.executable, "-m", "keydnn", "verify", str(dst)], capture_output=True, text=True,
                                cwd=tmp)
        print("keydnn verify:", replay.stdout.strip())
    expected = keras_predict(keras_model, x_test)
    got = model(x_test)
    err = float(np.abs(got - expected).max())
    acc_keras = float((expected.argmax(1) == y_test).mean())
    acc_keydnn = float((got.argmax(1) == y_test).mean())
    same = int((got.argmax(1) == expected.argmax(1)).sum())
    print(f"trained in {train_s:.1f} s; {len(x_test)} test digits")
    print(f"max |keydnn - keras| = {err:.2e} (tolerance 1e-5); identical predictions {same}/{len(x_test)}")
    print(f"accuracy: keras {acc_keras:.4f}, keydnn {acc_keydnn:.4f}")
    ok = err <= 1e-5 and acc_keras == acc_keydnn and same == len(x_test) and replay.returncode == 0
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
