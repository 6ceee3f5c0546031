"""What crosses from the reading child to its parent: the spec as JSON plus one ``.npy`` per weight.

Arrays are saved and loaded with ``allow_pickle=False``; nothing executable crosses the boundary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from keydnn.errors import KerasInteropError, Problem

from ..spec import LayerSpec, ModelSpec

__all__ = ["error_from_json", "error_to_json", "spec_from_dir", "spec_to_dir"]


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)
    return value


def error_to_json(exc: KerasInteropError) -> str:
    """The child's refusal as JSON (values that JSON cannot hold become their repr)."""
    problems = [
        {**{k: getattr(p, k) for k in ("message", "layer_index", "layer_name", "layer_class", "field", "supported")},
         "value": _jsonable(p.value)}
        for p in exc.problems
    ]
    return json.dumps({"summary": exc.summary, "problems": problems}, allow_nan=True)


def error_from_json(text: str) -> KerasInteropError:
    """The child's refusal, rebuilt in the parent as the same ``KerasInteropError``."""
    doc = json.loads(text)
    return KerasInteropError(doc["summary"], [Problem(**p) for p in doc["problems"]])


def spec_to_dir(spec: ModelSpec, out: Path) -> None:
    """Write ``spec`` under ``out``: ``spec.json`` and one ``.npy`` per weight (bfloat16 stored as uint16)."""
    layers = []
    n = 0
    for layer in spec.layers:
        weights = []
        for name, array in layer.weights:
            bfloat16 = array.dtype.name == "bfloat16"
            np.save(out / f"w{n}.npy", array.view(np.uint16) if bfloat16 else array, allow_pickle=False)
            weights.append({"name": name, "file": f"w{n}.npy", "bfloat16": bfloat16})
            n += 1
        layers.append({
            "index": layer.index, "class_name": layer.class_name, "name": layer.name, "config": layer.config,
            "weights": weights, "module": layer.module, "registered_name": layer.registered_name,
            "inbound_nodes": layer.inbound_nodes,
        })
    doc = {
        "model_class": spec.model_class, "name": spec.name, "input_shape": list(spec.input_shape),
        "input_dtype": spec.input_dtype, "layers": layers, "source_format": spec.source_format,
        "keras_version": spec.keras_version, "input_layers": spec.input_layers,
        "output_layers": spec.output_layers, "input_layer_configs": list(spec.input_layer_configs),
    }
    (out / "spec.json").write_text(json.dumps(doc, allow_nan=True), "utf-8")


def spec_from_dir(out: Path) -> ModelSpec:
    """Read back what ``spec_to_dir`` wrote (``allow_pickle=False``), weights read-only."""
    doc = json.loads((out / "spec.json").read_text("utf-8"))
    layers = []
    for layer in doc["layers"]:
        weights = []
        for w in layer["weights"]:
            array = np.load(out / w["file"], allow_pickle=False)
            if w["bfloat16"]:
                import ml_dtypes

                array = array.view(ml_dtypes.bfloat16)
            array.flags.writeable = False
            weights.append((w["name"], array))
        layers.append(LayerSpec(
            index=layer["index"], class_name=layer["class_name"], name=layer["name"], config=layer["config"],
            weights=tuple(weights), module=layer["module"], registered_name=layer["registered_name"],
            inbound_nodes=layer["inbound_nodes"],
        ))
    return ModelSpec(
        model_class=doc["model_class"], name=doc["name"], input_shape=tuple(doc["input_shape"]),
        input_dtype=doc["input_dtype"], layers=tuple(layers), source_format=doc["source_format"],
        keras_version=doc["keras_version"], input_layers=doc["input_layers"], output_layers=doc["output_layers"],
        input_layer_configs=tuple(doc["input_layer_configs"]),
    )
