"""Building the ``ModelSpec`` from a parsed config and a weight store (files only; live models in ``live``)."""

from __future__ import annotations

from typing import Any

from keydnn.frontends.keras.operations import H5_OPERATION_MODULE, looks_like_operation

from ..spec import LayerSpec, ModelSpec
from .limits import fail
from .model_config import ParsedModel
from .weight_names import canonical_weight_name, expected_count

__all__ = ["build_spec"]


def build_spec(
    parsed: ParsedModel,
    read_weights: Any,
    source_format: str,
    keras_version: str | None,
    where: str,
    layer_names: frozenset[str] | None = None,
) -> ModelSpec:
    """``layer_names``: a Keras 3 ``.h5`` file's ``model.layers`` names; config entries outside it that look
    like operations (``looks_like_operation``) get the operation module the file does not record."""
    layers: list[LayerSpec] = []
    for index, entry in parsed.indexed():
        if entry.is_input:
            continue
        weights = [
            (canonical_weight_name(entry.class_name, name), array)
            for name, array in read_weights(index, entry)
        ]
        expected = expected_count(entry.class_name, entry.config)
        if expected is not None and len(weights) < expected:
            raise fail(
                where,
                f"{len(weights)} stored weights, expected {expected}",
                layer_index=index,
                layer_name=entry.name,
                layer_class=entry.class_name,
            )
        module = entry.module
        if (module is None and layer_names is not None and entry.name not in layer_names
                and looks_like_operation(entry.config)):
            module = H5_OPERATION_MODULE  # Keras 3's .h5 records no module; see keydnn.frontends.keras.operations
        layers.append(
            LayerSpec(
                index=index,
                class_name=entry.class_name,
                name=entry.name,
                config=entry.config,
                weights=tuple(weights),
                module=module,
                registered_name=entry.registered_name,
                inbound_nodes=entry.inbound_nodes,
            )
        )
    return ModelSpec(
        model_class=parsed.model_class,
        name=parsed.name,
        input_shape=parsed.input_shape,
        input_dtype=parsed.input_dtype,
        layers=tuple(layers),
        source_format=source_format,
        keras_version=keras_version,
        input_layers=parsed.input_layers,
        output_layers=parsed.output_layers,
        input_layer_configs=tuple(
            {"name": e.name, "config": e.config} for e in parsed.entries if e.is_input
        ),
    )
