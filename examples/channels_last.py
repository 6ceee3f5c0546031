"""A channels_last CNN (the Keras default) converted with no hand work; the layout pass at work.

Trains a small channels_last CNN with BatchNormalization, Dropout, a strided
'same' convolution and a depthwise convolution on offline digits, converts it
with ``keydnn.from_keras``, shows how many transposes the canonicalized IR
keeps (one, at the input; none with ``input_layout="channels_first"``), and
checks the predictions against Keras. Needs TensorFlow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import keydnn  # noqa: E402
from digits import load_digits_28  # noqa: E402


def build(keras):
    L = keras.layers
    return keras.Sequential([
        L.Input(shape=(28, 28, 1)),
        L.Conv2D(16, 3, strides=2, padding="same"),
        L.BatchNormalization(),
        L.ReLU(),
        L.DepthwiseConv2D(3, padding="same"),
        L.Conv2D(32, 1),
        L.ReLU(),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dropout(0.2),
        L.Dense(10),
        L.Softmax(),
    ], name="digits_cl")


def main() -> int:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    xtr, ytr, xte, yte = load_digits_28(channels_first=False)
    model = build(tf.keras)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(xtr, ytr, epochs=5, batch_size=64, verbose=0)
    converted = keydnn.from_keras(model)
    kinds = [n.op.kind for n in converted.graph.nodes]
    print(converted.graph)
    print(f"transposes in the canonicalized IR: {kinds.count('transpose')}; batch_norm left: {kinds.count('batch_norm')}")
    expected = model.predict(xte, verbose=0)
    err = float(np.abs(converted(xte) - expected).max())
    nchw = keydnn.from_keras(model, input_layout="channels_first")
    err_cf = float(np.abs(nchw(xte.transpose(0, 3, 1, 2)) - expected).max())
    n_t = [n.op.kind for n in nchw.graph.nodes].count("transpose")
    print(f"max |keydnn - keras| = {err:.2e}; with channels_first input ({n_t} transposes): {err_cf:.2e}")
    ok = err <= 1e-4 and err_cf <= 1e-4 and kinds.count("transpose") == 1 and n_t == 0
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
