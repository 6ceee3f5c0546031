"""Minimal valid model files, built by hand with ``json``/``zipfile``/``h5py`` only.

The fuzz tests mutate these seeds. They are built here, without TensorFlow,
so that the fuzzers run in every CI job in a fraction of a second per seed;
they copy the layout Keras itself writes (see /work/shared/KERAS_FILES.md and
``test_hand_seeds_look_like_keras_files``, which compares them with files
TensorFlow saves) so that mutations start from the same structure a real
file has and reach the same code paths.

Two models, shrunk so one conversion takes milliseconds:

* ``"cnn"``: the project's seed CNN (Conv2D -> ReLU -> MaxPooling2D -> Conv2D
  -> ReLU -> GlobalAveragePooling2D -> Flatten -> Dense -> Softmax),
  channels_first, every converter of ``convert_core.py`` once;
* ``"zoo"``: channels_last, one of each other family of converters (padding,
  depthwise and separable convolutions, batch norm, PReLU/LeakyReLU/ELU,
  pooling, upsampling, cropping, dropout, rescaling, reshape, permute), with
  the configs Keras 3 writes for them (tf_keras spellings for Keras 2 files).
"""

from __future__ import annotations

import copy
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

__all__ = [
    "KERAS_FLAVORS", "MODELS", "INPUT_SHAPE", "input_shape", "seed_weights", "model_config", "keras3_zip_bytes", "keras3_h5_bytes",
    "keras2_h5_bytes", "keras_seed_bytes", "write_keras_seed", "write_artifact_seed", "zip_bytes", "h5_bytes",
]

#: Flavors of Keras file the reader accepts (= ``ModelSpec.source_format``).
KERAS_FLAVORS: tuple[str, ...] = ("keras3-zip", "keras3-h5", "keras2-h5")
#: Input of the "cnn" seed model, without the batch dimension (channels_first).
INPUT_SHAPE: tuple[int, ...] = (2, 6, 6)

_K3_VERSION = "3.15.1"
_K2_VERSION = "2.21.0"

# (class_name, layer name, config fields beyond name/trainable/dtype, weight names)
_LAYERS: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("Conv2D", "conv2d", {
        "filters": 3, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
        "data_format": "channels_first", "dilation_rate": [1, 1], "groups": 1, "activation": "linear",
        "use_bias": True, "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
        "kernel_constraint": None, "bias_constraint": None}, ["kernel", "bias"]),
    ("ReLU", "re_lu", {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}, []),
    ("MaxPooling2D", "max_pooling2d", {
        "pool_size": [2, 2], "padding": "valid", "strides": [2, 2], "data_format": "channels_first"}, []),
    ("Conv2D", "conv2d_1", {
        "filters": 4, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
        "data_format": "channels_first", "dilation_rate": [1, 1], "groups": 1, "activation": "linear",
        "use_bias": True, "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
        "kernel_constraint": None, "bias_constraint": None}, ["kernel", "bias"]),
    ("ReLU", "re_lu_1", {"max_value": None, "negative_slope": 0.0, "threshold": 0.0}, []),
    ("GlobalAveragePooling2D", "global_average_pooling2d", {"data_format": "channels_first", "keepdims": False}, []),
    ("Flatten", "flatten", {"data_format": "channels_last"}, []),
    ("Dense", "dense", {
        "units": 3, "activation": "linear", "use_bias": True, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
        "bias_constraint": None}, ["kernel", "bias"]),
    ("Softmax", "softmax", {"axis": -1}, []),
]


_CNN_SHAPES = {"conv2d": [(3, 3, 2, 3), (3,)], "conv2d_1": [(3, 3, 3, 4), (4,)], "dense": [(4, 3), (3,)]}

_CONV_EXTRA = {"kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
               "kernel_constraint": None, "bias_constraint": None}
_ZOO: list[tuple[str, str, dict[str, Any], list[str]]] = [
    ("ZeroPadding2D", "zero_padding2d", {"padding": [[1, 1], [1, 1]], "data_format": "channels_last"}, []),
    ("DepthwiseConv2D", "depthwise_conv2d", {
        "depth_multiplier": 2, "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid",
        "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "linear", "use_bias": True},
     ["kernel", "bias"]),
    ("BatchNormalization", "batch_normalization", {
        "axis": -1, "momentum": 0.99, "epsilon": 0.001, "center": True, "scale": True, "synchronized": False,
        "renorm": False, "renorm_clipping": None, "renorm_momentum": 0.99},
     ["gamma", "beta", "moving_mean", "moving_variance"]),
    ("LeakyReLU", "leaky_re_lu", {"negative_slope": 0.3}, []),
    ("SeparableConv2D", "separable_conv2d", {
        "depth_multiplier": 1, "filters": 3, "kernel_size": [3, 3], "strides": [1, 1], "padding": "same",
        "data_format": "channels_last", "dilation_rate": [1, 1], "activation": "linear", "use_bias": True},
     ["depthwise_kernel", "pointwise_kernel", "bias"]),
    ("PReLU", "p_re_lu", {"shared_axes": None}, ["alpha"]),
    ("AveragePooling2D", "average_pooling2d", {
        "pool_size": [2, 2], "padding": "valid", "strides": [2, 2], "data_format": "channels_last"}, []),
    ("UpSampling2D", "up_sampling2d", {"size": [2, 2], "data_format": "channels_last",
                                       "interpolation": "nearest"}, []),
    ("Cropping2D", "cropping2d", {"cropping": [[1, 1], [1, 1]], "data_format": "channels_last"}, []),
    ("Activation", "activation", {"activation": "tanh"}, []),
    ("Dropout", "dropout", {"rate": 0.5, "seed": None, "noise_shape": None}, []),
    ("Conv2D", "conv2d", {
        "filters": 2, "kernel_size": [1, 1], "strides": [1, 1], "padding": "valid", "data_format": "channels_last",
        "dilation_rate": [1, 1], "groups": 1, "activation": "linear", "use_bias": True, **_CONV_EXTRA},
     ["kernel", "bias"]),
    ("ELU", "elu", {"alpha": 1.0}, []),
    ("GlobalMaxPooling2D", "global_max_pooling2d", {"data_format": "channels_last", "keepdims": False}, []),
    ("Rescaling", "rescaling", {"scale": 0.5, "offset": 0.1}, []),
    ("Reshape", "reshape", {"target_shape": [2, 1]}, []),
    ("Permute", "permute", {"dims": [2, 1]}, []),
    ("Flatten", "flatten", {"data_format": "channels_last"}, []),
    ("Dense", "dense", {"units": 2, "activation": "linear", "use_bias": True, "quantization_config": None,
                        **_CONV_EXTRA}, ["kernel", "bias"]),
]
_ZOO_SHAPES = {
    "depthwise_conv2d": [(3, 3, 2, 2), (4,)], "batch_normalization": [(4,), (4,), (4,), (4,)],
    "separable_conv2d": [(3, 3, 4, 1), (1, 1, 4, 3), (3,)], "p_re_lu": [(6, 6, 3)], "conv2d": [(1, 1, 3, 2), (2,)],
    "dense": [(2, 2), (2,)],
}

#: Seed models: name -> (input shape without batch, layers, weight shapes by layer name).
MODELS: dict[str, tuple[tuple[int, ...], list, dict]] = {
    "cnn": (INPUT_SHAPE, _LAYERS, _CNN_SHAPES),
    "zoo": ((6, 6, 2), _ZOO, _ZOO_SHAPES),
}

#: tf_keras spells some weights and fields differently from Keras 3.
_K2_WEIGHT_NAMES = {("DepthwiseConv2D", "kernel"): "depthwise_kernel"}
_K2_FIELDS = {"LeakyReLU": {"negative_slope": "alpha"}}
_K3_ONLY_FIELDS = {"synchronized", "quantization_config"}


def input_shape(model: str = "cnn") -> tuple[int, ...]:
    """The seed model's input shape, without the batch dimension."""
    return MODELS[model][0]


def seed_weights(seed: int = 0, model: str = "cnn") -> dict[str, list[tuple[str, np.ndarray]]]:
    """Layer name -> [(weight name, array)] in Keras's own order; seeded, non-trivial values.

    Variances are kept positive so the batch norm stays numerically valid.
    """
    rng = np.random.default_rng(seed)
    _, layers, shapes = MODELS[model]
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for _cls, name, _, wnames in layers:
        items = []
        for w, shape in zip(wnames, shapes.get(name, [])):
            array = (rng.standard_normal(shape) * 0.5).astype("float32")
            items.append((w, np.abs(array) + np.float32(0.5) if "variance" in w else array))
        out[name] = items
    return out


def _layer_names(model: str) -> list[str]:
    return [name for _, name, _, _ in MODELS[model][1]]


def _class_of(model: str, layer: str) -> str:
    return next(cls for cls, name, _, _ in MODELS[model][1] if name == layer)


def _policy(keras3: bool) -> Any:
    if keras3:
        return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
    return "float32"


def model_config(flavor: str, model: str = "cnn") -> dict[str, Any]:
    """The ``{"class_name": "Sequential", "config": ...}`` document as this flavor of Keras writes it."""
    keras3 = flavor != "keras2-h5"
    batch = [None, *MODELS[model][0]]
    if keras3:
        input_cfg = {"batch_shape": batch, "dtype": "float32", "sparse": False, "ragged": False,
                     "name": "input_layer", "optional": False}
    else:
        input_cfg = {"batch_input_shape": batch, "dtype": "float32", "sparse": False, "ragged": False,
                     "name": "input_1"}
    layers: list[dict[str, Any]] = [{"class_name": "InputLayer", "config": input_cfg}]
    init = {"kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                                   "config": {"seed": None}, "registered_name": None},
            "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                                 "registered_name": None}}
    for cls, name, fields, wnames in MODELS[model][1]:
        cfg: dict[str, Any] = {"name": name, "trainable": True, "dtype": _policy(keras3), **copy.deepcopy(fields)}
        if not keras3:
            for k3, k2 in _K2_FIELDS.get(cls, {}).items():
                cfg[k2] = cfg.pop(k3)
            for key in _K3_ONLY_FIELDS:
                cfg.pop(key, None)
        if wnames:
            cfg.update(copy.deepcopy(init))
        layers.append({"class_name": cls, "config": cfg})
    if keras3:
        for entry in layers:
            entry["module"] = "keras.layers"
            entry["registered_name"] = None
    root: dict[str, Any] = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    if keras3:
        root = {"module": "keras", **root, "registered_name": None,
                "build_config": {"input_shape": batch}, "compile_config": None}
        root["config"]["trainable"] = True
        root["config"]["dtype"] = _policy(True)
    return root


def h5_bytes(fill: Any) -> bytes:
    """An in-memory HDF5 file written by ``fill(h5)``."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        fill(h5)
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip archive of ``members`` (Keras stores its members uncompressed)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _string_array(items: list[str]) -> np.ndarray:
    if not items:
        return np.array([], dtype="float64")  # what Keras writes for "no names"
    return np.array(items, dtype=h5py.string_dtype())


def keras3_zip_bytes(config: Any = None, weights: dict | None = None, metadata: Any = None,
                     model: str = "cnn") -> bytes:
    """A ``.keras`` archive: metadata.json, config.json, model.weights.h5 (``layers/<name>/vars/<i>``)."""
    config = model_config("keras3-zip", model) if config is None else config
    weights = seed_weights(model=model) if weights is None else weights
    metadata = {"keras_version": _K3_VERSION, "date_saved": "2026-01-01@00:00:00"} if metadata is None else metadata

    def fill(h5: h5py.File) -> None:
        layers = h5.create_group("layers")
        for name in _layer_names(model):
            group = layers.create_group(name).create_group("vars")
            group.attrs["name"] = name
            for i, (_, array) in enumerate(weights.get(name, [])):
                group[str(i)] = array
        h5.create_group("vars").attrs["name"] = "sequential"

    return zip_bytes({
        "metadata.json": json.dumps(metadata).encode(),
        "config.json": json.dumps(config).encode(),
        "model.weights.h5": h5_bytes(fill),
    })


def _whole_model_h5(config: Any, weights: dict, version: str, path_of: Any, model: str) -> bytes:
    def fill(h5: h5py.File) -> None:
        h5.attrs["backend"] = "tensorflow"
        h5.attrs["keras_version"] = version
        h5.attrs["model_config"] = json.dumps(config)
        mw = h5.create_group("model_weights")
        mw.attrs["backend"] = "tensorflow"
        mw.attrs["keras_version"] = version
        names = _layer_names(model)
        mw.attrs["layer_names"] = _string_array(names)
        for name in names + ["top_level_model_weights"]:
            group = mw.create_group(name)
            full = [path_of(name, w) for w, _ in weights.get(name, [])]
            group.attrs["weight_names"] = _string_array(full)
            for path, (_, array) in zip(full, weights.get(name, [])):
                group[path] = array

    return h5_bytes(fill)


def keras3_h5_bytes(config: Any = None, weights: dict | None = None, model: str = "cnn") -> bytes:
    """A whole-model ``.h5`` as Keras 3 writes it (``<layer>/sequential/<layer>/<var>``)."""
    return _whole_model_h5(model_config("keras3-h5", model) if config is None else config,
                           seed_weights(model=model) if weights is None else weights, _K3_VERSION,
                           lambda layer, var: f"sequential/{layer}/{var}", model)


def keras2_h5_bytes(config: Any = None, weights: dict | None = None, model: str = "cnn") -> bytes:
    """A whole-model ``.h5`` as tf_keras writes it (``<layer>/<layer>/<var>:0``)."""
    def path_of(layer: str, var: str) -> str:
        return f"{layer}/{_K2_WEIGHT_NAMES.get((_class_of(model, layer), var), var)}:0"

    return _whole_model_h5(model_config("keras2-h5", model) if config is None else config,
                           seed_weights(model=model) if weights is None else weights, _K2_VERSION, path_of, model)


_BUILDERS = {"keras3-zip": keras3_zip_bytes, "keras3-h5": keras3_h5_bytes, "keras2-h5": keras2_h5_bytes}


def keras_seed_bytes(flavor: str, config: Any = None, weights: dict | None = None, model: str = "cnn") -> bytes:
    """A seed model as a file of the given flavor, optionally with another config or weights."""
    return _BUILDERS[flavor](config, weights, model=model)


def write_keras_seed(path: Path, flavor: str, config: Any = None, weights: dict | None = None,
                     model: str = "cnn") -> Path:
    path.write_bytes(keras_seed_bytes(flavor, config, weights, model=model))
    return path


def write_artifact_seed(path: Path, *, sidecar: bool = False, verification: bool = True,
                        model: str = "cnn") -> Path:
    """A seed model converted by keydnn and saved (with verification vectors by default)."""
    import keydnn
    from keydnn.ir import run_reference

    src = write_keras_seed(path.with_suffix(".keras"), "keras3-zip", model=model)
    model_obj = keydnn.from_keras(src, allow_non_linear_activation=True)
    if verification:
        x = np.random.default_rng(3).standard_normal((2, *input_shape(model))).astype("float32")
        model_obj.verification = {"inputs": [x], "outputs": [run_reference(model_obj.graph, x)[0]],
                                  "rtol": 1e-4, "atol": 1e-5, "source": "keras"}
    model_obj.save(path, sidecar=sidecar)
    src.unlink()
    return path
