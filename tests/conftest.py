"""Shared fixtures: Keras models in every source form (live Keras 3 / tf_keras, .keras, .h5 K3, .h5 K2)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: Words in a test's source that mean it runs TensorFlow (or is skipped without it).
_NEEDS_TF = ("tensorflow", "tf_keras", "keras_predict", "keras_sources", "keras_outputs")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs TensorFlow ``keras``, so that ``-m "not keras"`` is the TensorFlow-free subset.

    A test needs TensorFlow when it uses a Keras fixture or names TensorFlow / tf_keras / the Keras oracle in its
    own source (an explicit ``@pytest.mark.keras`` works too).
    """
    import inspect

    for item in items:
        if item.get_closest_marker("keras") is not None:
            continue
        fn = getattr(item, "function", None)
        try:
            source = inspect.getsource(fn) if fn is not None else ""
        except (OSError, TypeError):
            source = ""
        if any(f in getattr(item, "fixturenames", ()) for f in ("keras_sources",)) or \
                any(word in source for word in _NEEDS_TF):
            item.add_marker(pytest.mark.keras)


#: Every form a Keras model reaches keydnn in.
SOURCE_FORMS = ("live-keras3", "keras3-zip", "keras3-h5", "live-tf_keras", "keras2-h5")


@pytest.fixture(scope="session")
def keras_sources(tmp_path_factory) -> Callable[..., list[tuple[str, Any, Any]]]:
    """``make(name, build_fn)`` -> [(form, model_or_path, live_model_that_wrote_it)] for all five forms."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf_keras")
    from fixtures.make_fixtures import build_and_save

    cache: dict[str, list[tuple[str, Any, Any]]] = {}
    root = tmp_path_factory.mktemp("keras_models")

    def make(name: str, build_fn: Callable[[Any], Any], seed: int = 0) -> list[tuple[str, Any, Any]]:
        if name not in cache:
            paths, models = build_and_save(build_fn, root / name, name, seed=seed)
            cache[name] = [
                ("live-keras3", models["keras3-zip"], models["keras3-zip"]),
                ("keras3-zip", paths["keras3-zip"], models["keras3-zip"]),
                ("keras3-h5", paths["keras3-h5"], models["keras3-h5"]),
                ("live-tf_keras", models["keras2-h5"], models["keras2-h5"]),
                ("keras2-h5", paths["keras2-h5"], models["keras2-h5"]),
            ]
        return cache[name]

    return make


#: Layers whose channels_last twin differs only in data_format (or that are elementwise).
_TWIN_AS_IS = ("Conv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "Flatten", "ReLU", "Softmax",
               "Activation", "DepthwiseConv2D", "SeparableConv2D", "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D",
               "UpSampling2D", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
               "ActivityRegularization", "LeakyReLU", "ELU", "BatchNormalization", "Conv1D", "MaxPooling1D",
               "AveragePooling1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D", "SpatialDropout1D")
_TO_FEATURES = ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "GlobalAveragePooling1D",
                "GlobalMaxPooling1D")


def _channels_last_axis(axis: int, rank: int) -> int:
    """Where axis ``axis`` of a channels_first tensor sits in its channels_last twin."""
    a = axis % rank
    return 0 if a == 0 else rank - 1 if a == 1 else a - 1


def channels_last_twin(model: Any) -> Any | None:
    """The same Sequential model, rebuilt channels_last with the very same weights.

    TensorFlow 2.21's CPU kernels compute some channels_first Conv2D and
    Conv1D layers wrongly (the bias lands on the wrong pixels; see
    test_parity_keras.test_tf_channels_first_conv_discrepancy), so a
    channels_first model's oracle is its channels_last twin, run on the
    transposed input. Returns None when the model has no channels_first layer
    (or a layer whose twin is not obvious).
    """
    import tensorflow as tf

    keras = tf.keras
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as keras  # the twin must share the model's Keras version (hard_sigmoid differs)
    L = keras.layers
    if not any(getattr(layer, "data_format", None) == "channels_first" for layer in model.layers):
        return None
    shape = tuple(model.inputs[0].shape)[1:]
    rank = len(shape) + 1
    if rank not in (3, 4):
        return None
    layers: list[Any] = [L.Input(shape=shape[1:] + shape[:1])]
    weights: list[np.ndarray] = []
    for layer in model.layers:
        cfg = dict(layer.get_config())
        cls = type(layer).__name__
        if rank > 2 and cls not in _TWIN_AS_IS:
            return None  # not a layer whose channels_last twin is obvious
        if rank > 2 and cls == "Flatten" and cfg.get("data_format") != "channels_first":
            layers.append(L.Permute((rank - 1, *range(1, rank - 1))))  # flatten in the channels_first order
        if "data_format" in cfg:
            cfg["data_format"] = "channels_last"
        if cls in ("Softmax", "BatchNormalization") and rank > 2:
            axis = cfg["axis"][0] if isinstance(cfg["axis"], (list, tuple)) and len(cfg["axis"]) == 1 else cfg["axis"]
            cfg["axis"] = _channels_last_axis(axis, rank)
        cfg.pop("name", None)
        new = getattr(L, cls).from_config(cfg)
        layers.append(new)
        weights += layer.get_weights()
        if cls in _TO_FEATURES and not cfg.get("keepdims"):
            rank = 2
    twin = keras.Sequential(layers)
    twin.set_weights(weights)
    twin._keydnn_output_rank = rank  # still the input's rank: transpose the output back
    return twin


def keras_predict(model: Any, x: np.ndarray) -> np.ndarray:
    """What Keras computes for ``x``; for channels_first models, via their channels_last twin.

    (TensorFlow runs channels_first Conv2D on the CPU only with its oneDNN
    kernels, which are off by default on CPUs without AVX-512 VNNI, and with
    them sometimes runs it wrongly; the twin is exact for both. Models without
    an obvious twin run through ``keydnn.keras_runner``, which uses XLA for
    channels_first layers.)
    """
    twin = getattr(model, "_keydnn_cl_twin", False)
    if twin is False:
        twin = model._keydnn_cl_twin = channels_last_twin(model)
    if twin is None:  # no obvious twin: Keras itself, through XLA where TensorFlow lacks NCHW kernels
        from keydnn.keras_runner import keras_outputs

        outputs = keras_outputs(model, x)
        return outputs[0] if len(outputs) == 1 else outputs
    to_last = (0, *range(2, x.ndim), 1)
    y = np.asarray(twin(x.transpose(to_last), training=False))
    return y.transpose(np.argsort(to_last)) if twin._keydnn_output_rank == x.ndim else y
