"""Minimal valid model files, built by hand with ``json``/``zipfile``/``h5py`` only.

The fuzz tests mutate these seeds. They are built here, without TensorFlow,
so that the fuzzers run in every CI job in a fraction of a second per seed;
they copy the layout Keras itself writes (see /work/shared/KERAS_FILES.md and
``test_hand_seeds_look_like_keras_files``, which compares them with files
TensorFlow saves) so that mutations start from the same structure a real
file has and reach the same code paths.

The model is the project's seed CNN, shrunk so one conversion takes
milliseconds: Conv2D -> ReLU -> MaxPooling2D -> Conv2D -> ReLU ->
GlobalAveragePooling2D -> Flatten -> Dense -> Softmax, channels_first, every
converter of ``frontends/keras/convert_core.py`` exercised once.
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
    "KERAS_FLAVORS", "INPUT_SHAPE", "seed_weights", "model_config", "keras3_zip_bytes", "keras3_h5_bytes",
    "keras2_h5_bytes", "keras_seed_bytes", "write_keras_seed", "write_artifact_seed", "zip_bytes", "h5_bytes",
]

#: Flavors of Keras file the reader accepts (= ``ModelSpec.source_format``).
KERAS_FLAVORS: tuple[str, ...] = ("keras3-zip", "keras3-h5", "keras2-h5")
#: Input of the seed model, batch first, channels_first.
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


def seed_weights(seed: int = 0) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Layer name -> [(weight name, array)] in Keras's own order; seeded, non-trivial values."""
    rng = np.random.default_rng(seed)
    shapes = {
        "conv2d": [(3, 3, 2, 3), (3,)],
        "conv2d_1": [(3, 3, 3, 4), (4,)],
        "dense": [(4, 3), (3,)],
    }
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for cls, name, _, wnames in _LAYERS:
        out[name] = [(w, (rng.standard_normal(s) * 0.5).astype("float32")) for w, s in zip(wnames, shapes.get(name, []))]
    return out


def _policy(keras3: bool) -> Any:
    if keras3:
        return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
    return "float32"


def model_config(flavor: str) -> dict[str, Any]:
    """The ``{"class_name": "Sequential", "config": ...}`` document as this flavor of Keras writes it."""
    keras3 = flavor != "keras2-h5"
    batch = [None, *INPUT_SHAPE]
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
    for cls, name, fields, wnames in _LAYERS:
        cfg: dict[str, Any] = {"name": name, "trainable": True, "dtype": _policy(keras3), **copy.deepcopy(fields)}
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


def keras3_zip_bytes(config: Any = None, weights: dict | None = None, metadata: Any = None) -> bytes:
    """A ``.keras`` archive: metadata.json, config.json, model.weights.h5 (``layers/<name>/vars/<i>``)."""
    config = model_config("keras3-zip") if config is None else config
    weights = seed_weights() if weights is None else weights
    metadata = {"keras_version": _K3_VERSION, "date_saved": "2026-01-01@00:00:00"} if metadata is None else metadata

    def fill(h5: h5py.File) -> None:
        layers = h5.create_group("layers")
        for _, name, _, _ in _LAYERS:
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


def _whole_model_h5(config: Any, weights: dict, version: str, path_of: Any) -> bytes:
    def fill(h5: h5py.File) -> None:
        h5.attrs["backend"] = "tensorflow"
        h5.attrs["keras_version"] = version
        h5.attrs["model_config"] = json.dumps(config)
        mw = h5.create_group("model_weights")
        mw.attrs["backend"] = "tensorflow"
        mw.attrs["keras_version"] = version
        names = [name for _, name, _, _ in _LAYERS]
        mw.attrs["layer_names"] = _string_array(names)
        for name in names + ["top_level_model_weights"]:
            group = mw.create_group(name)
            full = [path_of(name, w) for w, _ in weights.get(name, [])]
            group.attrs["weight_names"] = _string_array(full)
            for path, (_, array) in zip(full, weights.get(name, [])):
                group[path] = array

    return h5_bytes(fill)


def keras3_h5_bytes(config: Any = None, weights: dict | None = None) -> bytes:
    """A whole-model ``.h5`` as Keras 3 writes it (``<layer>/sequential/<layer>/<var>``)."""
    return _whole_model_h5(model_config("keras3-h5") if config is None else config,
                           seed_weights() if weights is None else weights, _K3_VERSION,
                           lambda layer, var: f"sequential/{layer}/{var}")


def keras2_h5_bytes(config: Any = None, weights: dict | None = None) -> bytes:
    """A whole-model ``.h5`` as tf_keras writes it (``<layer>/<layer>/<var>:0``)."""
    return _whole_model_h5(model_config("keras2-h5") if config is None else config,
                           seed_weights() if weights is None else weights, _K2_VERSION,
                           lambda layer, var: f"{layer}/{var}:0")


_BUILDERS = {"keras3-zip": keras3_zip_bytes, "keras3-h5": keras3_h5_bytes, "keras2-h5": keras2_h5_bytes}


def keras_seed_bytes(flavor: str, config: Any = None, weights: dict | None = None) -> bytes:
    """The seed model as a file of the given flavor, optionally with another config or weights."""
    return _BUILDERS[flavor](config, weights)


def write_keras_seed(path: Path, flavor: str, config: Any = None, weights: dict | None = None) -> Path:
    path.write_bytes(keras_seed_bytes(flavor, config, weights))
    return path


def write_artifact_seed(path: Path, *, sidecar: bool = False, verification: bool = True) -> Path:
    """The seed model converted by keydnn and saved (with verification vectors by default)."""
    import keydnn
    from keydnn.ir import run_reference

    src = write_keras_seed(path.with_suffix(".keras"), "keras3-zip")
    model = keydnn.from_keras(src)
    if verification:
        x = np.random.default_rng(3).standard_normal((2, *INPUT_SHAPE)).astype("float32")
        model.verification = {"inputs": [x], "outputs": [run_reference(model.graph, x)[0]],
                              "rtol": 1e-4, "atol": 1e-5, "source": "keras"}
    model.save(path, sidecar=sidecar)
    src.unlink()
    return path
