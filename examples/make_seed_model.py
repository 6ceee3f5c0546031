"""Train the seed CNN on offline digits and save the bundled example (needs TensorFlow).

Writes ``examples/seed_cnn.h5`` and ``examples/seed_cnn_samples.npz`` (64 test
inputs, their labels and Keras's outputs), which ``examples/quickstart.py``
uses to check a conversion on a machine without TensorFlow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from digits import load_digits_28  # noqa: E402


def build_seed_model(keras):
    """The interop-friendly model of the KeyDNN docs (channels_first)."""
    L = keras.layers
    return keras.Sequential([
        L.Input(shape=(1, 28, 28)),
        L.Conv2D(8, (3, 3), padding="same", activation="linear", data_format="channels_first"),
        L.ReLU(),
        L.MaxPooling2D((2, 2), data_format="channels_first"),
        L.Conv2D(16, (3, 3), padding="same", activation="linear", data_format="channels_first"),
        L.ReLU(),
        L.GlobalAveragePooling2D(data_format="channels_first"),
        L.Flatten(),
        L.Dense(10, activation="linear"),
        L.Softmax(axis=-1),
    ], name="seed_cnn")


def train_seed_model(keras, epochs: int = 60, seed: int = 0):
    keras.utils.set_random_seed(seed)
    xtr, ytr, xte, yte = load_digits_28(channels_first=True)
    model = build_seed_model(keras)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    return model, (xtr, ytr, xte, yte)


def main(outdir: str = str(Path(__file__).resolve().parent)) -> None:
    import tensorflow as tf

    model, (_, _, xte, yte) = train_seed_model(tf.keras)
    out = Path(outdir)
    model.save(out / "seed_cnn.h5")
    x = xte[:64]
    np.savez(out / "seed_cnn_samples.npz", x=x, y=yte[:64], keras_out=model.predict(x, verbose=0))
    acc = float((model.predict(xte, verbose=0).argmax(1) == yte).mean())
    print(f"saved {out / 'seed_cnn.h5'}; test accuracy {acc:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
