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


def build_seed_model_channels_last(keras):
    """The seed model's channels_last twin: the same layers and weight shapes, NHWC input."""
    L = keras.layers
    return keras.Sequential([
        L.Input(shape=(28, 28, 1)),
        L.Conv2D(8, (3, 3), padding="same", activation="linear"),
        L.ReLU(),
        L.MaxPooling2D((2, 2)),
        L.Conv2D(16, (3, 3), padding="same", activation="linear"),
        L.ReLU(),
        L.GlobalAveragePooling2D(),
        L.Flatten(),
        L.Dense(10, activation="linear"),
        L.Softmax(axis=-1),
    ], name="seed_cnn_channels_last")


def train_seed_model(keras, epochs: int = 60, seed: int = 0):
    """Train the seed CNN; returns the channels_first model and the (channels_first) data split.

    Training runs on the channels_last twin and the weights are copied into the
    channels_first model, as the KeyDNN docs advise: TensorFlow trains
    channels_first convolutions on the CPU only with its oneDNN kernels, which
    are off by default on many CPUs (AVX2-only ones among them).
    """
    keras.utils.set_random_seed(seed)
    xtr, ytr, xte, yte = load_digits_28(channels_first=True)
    twin = build_seed_model_channels_last(keras)
    twin.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    twin.fit(xtr.transpose(0, 2, 3, 1), ytr, epochs=epochs, batch_size=64, verbose=0)
    model = build_seed_model(keras)
    model.set_weights(twin.get_weights())  # identical shapes: the global pool comes before the Dense
    return model, (xtr, ytr, xte, yte)


def keras_predict(model, x):
    """Keras's output for ``x`` on every CPU (XLA runs the channels_first convs where TensorFlow cannot)."""
    from keydnn.keras_runner import keras_outputs

    return keras_outputs(model, x)[0]


def main(outdir: str = str(Path(__file__).resolve().parent)) -> None:
    import tensorflow as tf

    model, (_, _, xte, yte) = train_seed_model(tf.keras)
    out = Path(outdir)
    model.save(out / "seed_cnn.h5")
    x = xte[:64]
    np.savez(out / "seed_cnn_samples.npz", x=x, y=yte[:64], keras_out=keras_predict(model, x))
    acc = float((keras_predict(model, xte).argmax(1) == yte).mean())
    print(f"saved {out / 'seed_cnn.h5'}; test accuracy {acc:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
