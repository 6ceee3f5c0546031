"""Offline handwritten digits at the seed model's 28x28: scikit-learn's digits, upsampled.

``tf.keras.datasets.mnist`` downloads at run time; scikit-learn ships its 8x8
digits, which we upsample (3x nearest, then a 2-pixel border) to 28x28 so the
seed model's input shape is kept. A local MNIST copy (``KEYDNN_MNIST=path.npz``
with x_train/y_train/x_test/y_test) is used instead when present.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["load_digits_28"]


def load_digits_28(channels_first: bool = True, seed: int = 0):
    """(x_train, y_train, x_test, y_test), float32 in [0, 1], shape (n, 1, 28, 28) or (n, 28, 28, 1)."""
    mnist = os.environ.get("KEYDNN_MNIST")
    if mnist and os.path.exists(mnist):
        with np.load(mnist, allow_pickle=False) as data:
            xtr, ytr, xte, yte = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        xtr, xte = xtr.astype("f4") / 255.0, xte.astype("f4") / 255.0
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.kron(digits.images, np.ones((3, 3))) / 16.0  # 8x8 -> 24x24
        images = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype("f4")  # -> 28x28
        order = np.random.default_rng(seed).permutation(len(images))
        images, labels = images[order], digits.target[order]
        split = int(0.8 * len(images))
        xtr, ytr, xte, yte = images[:split], labels[:split], images[split:], labels[split:]
    axis = 1 if channels_first else -1
    return np.expand_dims(xtr, axis), ytr.astype("i8"), np.expand_dims(xte, axis), yte.astype("i8")
