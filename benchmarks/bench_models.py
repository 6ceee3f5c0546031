"""The models ``cpu_bench.py`` (and ``ort_ratio.py``, ``seq_cputime.py``) measure: the small CNNs and MLP, the
sequence models, and their sample inputs. Random weights (fixed seeds), BatchNorm statistics randomized, so
that no folding shortcut makes a row cheaper than a trained model would be. The attention and U-Net rows
are in ``bench_models_vit_unet.py``; the keras.applications rows stay in ``cpu_bench.py``."""

from __future__ import annotations

import numpy as np

__all__ = ["build_models", "sequence_models", "SAMPLE_SHAPES", "sample_input", "mobilenet", "resnet"]


def build_models():
    import tensorflow as tf

    keras = tf.keras
    L = keras.layers
    keras.utils.set_random_seed(0)
    seed = keras.Sequential([
        L.Input((1, 28, 28)), L.Conv2D(8, 3, padding="same", data_format="channels_first"), L.ReLU(),
        L.MaxPooling2D(2, data_format="channels_first"),
        L.Conv2D(16, 3, padding="same", data_format="channels_first"), L.ReLU(),
        L.GlobalAveragePooling2D(data_format="channels_first"), L.Flatten(), L.Dense(10), L.Softmax(),
    ], name="seed_cnn")
    cifar = keras.Sequential([
        L.Input((32, 32, 3)), L.Conv2D(32, 3, padding="same"), L.BatchNormalization(), L.ReLU(),
        L.Conv2D(32, 3, padding="same", activation="relu"), L.MaxPooling2D(2),
        L.Conv2D(64, 3, padding="same", activation="relu"), L.Conv2D(64, 3, padding="same", activation="relu"),
        L.MaxPooling2D(2), L.Flatten(), L.Dense(128, activation="relu"), L.Dropout(0.5), L.Dense(10), L.Softmax(),
    ], name="cifar_cnn")
    # non-trivial batch-norm statistics, so that folding it is exercised
    bn = cifar.layers[1]
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 1.5, 32), rng.normal(0, 0.1, 32), rng.normal(0, 0.1, 32),
                    rng.uniform(0.5, 1.5, 32)])
    mlp = keras.Sequential([
        L.Input((784,)), L.Dense(512, activation="relu"), L.Dense(512, activation="relu"), L.Dense(10), L.Softmax(),
    ], name="mlp")
    from bench_models_vit_unet import unet64, vit_encoder  # the attention and U-Net rows

    return {"seed CNN": seed, "CIFAR CNN": cifar, "MLP": mlp, "ResNet-8": resnet(keras, rng),
            "MobileNet-style": mobilenet(keras), "ViT encoder": vit_encoder(keras), "U-Net 64": unet64(keras),
            **sequence_models(keras)}


def sequence_models(keras):
    """Issue 17's sequence rows: an LSTM text classifier (Embedding 20000x128, LSTM 128, Dense; int32 token
    ids of any length, measured at 100) and a GRU forecaster (64 steps x 8 features, two GRU 64)."""
    L = keras.layers
    text = keras.Sequential([
        L.Input((None,), dtype="int32"), L.Embedding(20000, 128), L.LSTM(128), L.Dense(2), L.Softmax(),
    ], name="lstm_text")
    forecast = keras.Sequential([
        L.Input((64, 8)), L.GRU(64, return_sequences=True), L.GRU(64), L.Dense(1),
    ], name="gru_forecast")
    return {"LSTM text": text, "GRU forecast": forecast}


#: Per-sample input shape of models whose Keras input has a variable length.
SAMPLE_SHAPES = {"LSTM text": (100,)}


def sample_input(name: str, model, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A batch for ``model``: token ids below the vocabulary for integer inputs, normal floats otherwise."""
    shape = (batch,) + SAMPLE_SHAPES.get(name, tuple(model.inputs[0].shape[1:]))
    if "int" in str(model.inputs[0].dtype):
        return rng.integers(1, 20000, size=shape).astype(np.int32)
    return rng.standard_normal(shape).astype(np.float32)


def mobilenet(keras):
    """A small depthwise-separable CNN (64x64x3, channels_last): a strided stem, then depthwise 3x3 (one of
    them strided) + pointwise 1x1 pairs, global pooling and a classifier. Shapes none of the other models
    have: depthwise filters, stride-2 depthwise, many 1x1 convs with few input channels."""
    L = keras.layers
    return keras.Sequential([
        L.Input((64, 64, 3)), L.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
        L.DepthwiseConv2D(3, padding="same"), L.ReLU(), L.Conv2D(64, 1, activation="relu"),
        L.DepthwiseConv2D(3, strides=2, padding="same"), L.ReLU(), L.Conv2D(128, 1, activation="relu"),
        L.DepthwiseConv2D(3, padding="same"), L.ReLU(), L.Conv2D(128, 1, activation="relu"),
        L.GlobalAveragePooling2D(), L.Dense(10), L.Softmax(),
    ], name="mobilenet_style")


def resnet(keras, rng):
    """A small channels_last ResNet (Functional): stem, three residual stages (16, 32, 64 filters; the
    last two downsample with a 1x1 projection), global pooling and a classifier; non-trivial BN statistics."""
    L = keras.layers

    def bn(name):
        return L.BatchNormalization(name=name)

    def block(x, filters, stride, name):
        y = L.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
        y = L.ReLU()(bn(f"{name}_bn1")(y))
        y = bn(f"{name}_bn2")(L.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y))
        if stride != 1 or x.shape[-1] != filters:
            x = bn(f"{name}_down_bn")(L.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_down")(x))
        return L.ReLU()(L.Add()([y, x]))

    x = keras.Input((32, 32, 3))
    y = L.ReLU()(bn("stem_bn")(L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(x)))
    y = block(y, 16, 1, "b1")
    y = block(y, 32, 2, "b2")
    y = block(y, 64, 2, "b3")
    y = L.Dense(10)(L.GlobalAveragePooling2D()(y))
    model = keras.Model(x, L.Softmax()(y), name="resnet8")
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])
    return model
