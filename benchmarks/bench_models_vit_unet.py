"""Benchmark models for ``cpu_bench.py``: a small ViT-style encoder and a small U-Net."""

from __future__ import annotations

__all__ = ["vit_encoder", "unet64"]


def vit_encoder(keras, blocks: int = 4, width: int = 128, heads: int = 4):
    """Patch embedding by a strided Conv2D (32x32x3 -> 8x8 = 64 tokens of width 128), then ``blocks``
    pre-norm blocks of MultiHeadAttention + MLP (tanh GELU, a Keras operation node), a final LayerNormalization, token mean, classifier.
    (No position embedding: Embedding layers are another issue's.)"""
    L = keras.layers
    x = keras.Input((32, 32, 3))
    h = L.Reshape((64, width))(L.Conv2D(width, 4, strides=4)(x))
    for i in range(blocks):
        a = L.LayerNormalization(epsilon=1e-6)(h)
        a = L.MultiHeadAttention(heads, width // heads, name=f"mha{i}")(a, a)
        h = L.Add()([h, a])
        f = L.LayerNormalization(epsilon=1e-6)(h)
        f = keras.ops.gelu(L.Dense(2 * width)(f), approximate=True)  # (tf2onnx exports exact gelu as Erfc,
        # which ONNX Runtime lacks)
        h = L.Add()([h, L.Dense(width)(f)])
    h = L.GlobalAveragePooling1D()(L.LayerNormalization(epsilon=1e-6)(h))
    return keras.Model(x, L.Dense(10)(h), name="vit_encoder")


def unet64(keras, width: int = 16):
    """A small U-Net on 64x64x3: two 2x2 max-pool downsamplings, Conv2DTranspose upsampling, skip
    concatenations, a 1x1 sigmoid head."""
    L = keras.layers
    x = keras.Input((64, 64, 3))
    c1 = L.Conv2D(width, 3, padding="same", activation="relu")(x)
    c2 = L.Conv2D(2 * width, 3, padding="same", activation="relu")(L.MaxPooling2D()(c1))
    b = L.Conv2D(4 * width, 3, padding="same", activation="relu")(L.MaxPooling2D()(c2))
    u2 = L.Conv2DTranspose(2 * width, 2, strides=2, padding="same")(b)
    c3 = L.Conv2D(2 * width, 3, padding="same", activation="relu")(L.Concatenate()([u2, c2]))
    u1 = L.Conv2DTranspose(width, 2, strides=2, padding="same")(c3)
    c4 = L.Conv2D(width, 3, padding="same", activation="relu")(L.Concatenate()([u1, c1]))
    return keras.Model(x, L.Conv2D(2, 1, activation="sigmoid")(c4), name="unet64")
