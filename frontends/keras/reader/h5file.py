"""Whole-model ``.h5`` files written by Keras 3 or Keras 2 / tf_keras."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..spec import ModelSpec
from . import heap_guard  # looked up at call time: tests switch the check off in a child process
from .build import build_spec
from .limits import fail
from .model_config import loads_json, parse_model_config
from .safe_h5 import attr_str, attr_str_list
from .weight_stores import H5Weights

__all__ = ["read_h5"]


def read_h5(path: Path, where: str) -> ModelSpec:
    """Read a whole-model ``.h5``; the Keras version (hence the weight layout) comes from its attributes,
    else from the config's Keras 3 markers."""
    heap_guard.check_global_heaps_in_file(path, where)
    try:
        h5 = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise fail(where, f"corrupt or unreadable HDF5 file ({exc})") from exc
    with h5:
        raw_config = h5.attrs.get("model_config")
        if isinstance(raw_config, np.ndarray) and raw_config.shape == ():
            raw_config = raw_config.item()
        if raw_config is None:
            hint = (
                " (looks like a weights-only file from save_weights)"
                if ("layers" in h5 or "layer_names" in h5.attrs or "model_weights" not in h5)
                else ""
            )
            raise fail(
                where,
                f"HDF5 file has no 'model_config' attribute{hint}; "
                "save the whole model with model.save()",
                field="model_config",
            )
        if not isinstance(raw_config, (str, bytes)):
            raise fail(
                where, "'model_config' attribute is not a JSON string", field="model_config"
            )
        root = loads_json(raw_config, where, "model_config attribute")
        keras_version = attr_str(h5, "keras_version")
        if keras_version is None and "model_weights" in h5:
            keras_version = attr_str(h5["model_weights"], "keras_version")
        parsed = parse_model_config(root, where)
        if keras_version is not None:
            source_format = "keras3-h5" if keras_version.startswith("3") else "keras2-h5"
        else:  # guess: Keras 3 writes batch_shape and DTypePolicy objects
            raw = (
                raw_config.decode("utf-8", "replace")
                if isinstance(raw_config, bytes)
                else raw_config
            )
            source_format = (
                "keras3-h5" if '"batch_shape"' in raw or "DTypePolicy" in raw else "keras2-h5"
            )
        store = H5Weights(h5, where)
        layer_names = None
        if source_format == "keras3-h5" and "model_weights" in h5:
            layer_names = attr_str_list(h5["model_weights"], "layer_names", where)
        return build_spec(parsed, store.read, source_format, keras_version, where,
                           layer_names=None if layer_names is None else frozenset(layer_names))
