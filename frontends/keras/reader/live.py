"""Live Keras 3 / tf_keras model objects, read by duck typing (this module never imports TensorFlow)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from keydnn.errors import KerasInteropError, Problem

from ..spec import LayerSpec, ModelSpec
from .limits import fail
from .model_config import parse_model_config
from .normalize import normalize_layer_config, plain
from .weight_names import canonical_weight_name, weight_names_for

__all__ = ["read_live_model"]

logger = logging.getLogger(__name__)


def _live_flavor(model: Any) -> tuple[str, str | None]:
    """("live-keras3" | "live-tf_keras", version) from the object's own modules."""
    roots = [c.__module__.split(".")[0] for c in type(model).__mro__]
    for root in roots:
        if root == "tf_keras":
            return "live-tf_keras", getattr(sys.modules.get("tf_keras"), "__version__", None)
    for root in roots:
        if root == "keras":
            version = getattr(sys.modules.get("keras"), "__version__", None)
            if isinstance(version, str) and version.startswith("2."):
                return "live-tf_keras", version
            return "live-keras3", version
    raise KerasInteropError(
        "expected a Keras 3 or tf_keras model, got "
        f"{type(model).__module__}.{type(model).__name__}",
        [
            Problem(
                message="not a Keras model",
                value=type(model).__name__,
                supported="keras.Model, tf_keras.Model",
            )
        ],
    )


def _live_input(model: Any) -> tuple[int | None, ...]:
    """Input shape of a built live model when its config does not say."""
    for attr in ("input_shape",):
        try:
            shape = getattr(model, attr)
        except Exception:  # unbuilt models raise AttributeError/ValueError
            continue
        if isinstance(shape, list) and shape and isinstance(shape[0], (list, tuple)):
            shape = shape[0]
        try:
            dims = tuple(None if d is None else int(d) for d in shape)
        except (TypeError, ValueError):
            continue
        return dims
    return ()


def read_live_model(model: Any) -> ModelSpec:
    """Describe a live ``keras`` (Keras 3) or ``tf_keras`` model as a ``ModelSpec``.

    Works by duck typing (``get_config``, ``layers``, ``get_weights``,
    ``weights``) so this module never imports TensorFlow itself; the model's
    own framework is already loaded by whoever built it.
    """
    source_format, keras_version = _live_flavor(model)
    where = f"live {type(model).__name__} model {getattr(model, 'name', '?')!r}"
    try:
        return _read_live(model, source_format, keras_version, where)
    except KerasInteropError:
        raise
    except Exception as exc:
        logger.debug("unexpected error reading %s", where, exc_info=True)
        raise fail(where, f"cannot read model ({type(exc).__name__}: {exc})") from exc


def _read_live(model: Any, source_format: str, keras_version: str | None, where: str) -> ModelSpec:
    model_layers = getattr(model, "layers", None)
    if not isinstance(model_layers, (list, tuple)):
        raise fail(where, "object has no 'layers' list; expected a Keras Model")
    try:
        config = model.get_config()
    except Exception as exc:  # subclassed models may not implement get_config
        logger.debug("%s: get_config() failed (%s); reading layers only", where, exc)
        config = None
    root = {
        "class_name": type(model).__name__,
        "config": plain(config) if isinstance(config, Mapping) else {},
    }
    parsed = parse_model_config(root, where)
    entries = {e.name: e for e in parsed.entries}
    input_shape = parsed.input_shape or _live_input(model)

    layers: list[LayerSpec] = []
    for index, layer in enumerate(model_layers):
        class_name = type(layer).__name__
        if class_name == "InputLayer":
            continue
        name = str(getattr(layer, "name", f"layer_{index}"))
        entry = entries.get(name)
        try:
            layer_config = layer.get_config()
        except Exception as exc:  # custom layers without get_config
            logger.debug("%s: layer %r get_config() failed: %s", where, name, exc)
            layer_config = entry.config if entry is not None else {}
        values = list(layer.get_weights())
        variables = list(getattr(layer, "weights", []))
        if len(values) != len(variables):
            raise fail(
                where,
                f"get_weights() returned {len(values)} arrays for {len(variables)} variables",
                layer_index=index,
                layer_name=name,
                layer_class=class_name,
            )
        full_names = [str(getattr(v, "path", None) or getattr(v, "name", "")) for v in variables]
        weights = []
        for short, value in zip(weight_names_for(name, full_names), values, strict=True):
            array = np.array(value, copy=True)
            array.flags.writeable = False
            weights.append((canonical_weight_name(class_name, short), array))
        layers.append(
            LayerSpec(
                index=index,
                class_name=entry.class_name if entry is not None else class_name,
                name=name,
                config=normalize_layer_config(layer_config),
                weights=tuple(weights),
                module=entry.module if entry is not None else None,
                registered_name=entry.registered_name if entry is not None else None,
                inbound_nodes=entry.inbound_nodes if entry is not None else None,
            )
        )
    # Keras 3 operations (``x + y``, keras.ops calls) are nodes of the config but not in ``model.layers``;
    # they hold no weights, so their config entry is all there is to read.
    from keydnn.frontends.keras.operations import OPERATION_MODULES

    seen = {spec.name for spec in layers}
    for position, e in enumerate(parsed.entries):
        if e.name not in seen and not e.is_input and (e.module or "").startswith(OPERATION_MODULES):
            layers.append(LayerSpec(index=len(model_layers) + position, class_name=e.class_name, name=e.name,
                                    config=e.config, weights=(), module=e.module, registered_name=e.registered_name,
                                    inbound_nodes=e.inbound_nodes))
    return ModelSpec(
        model_class=type(model).__name__,
        name=str(getattr(model, "name", parsed.name)),
        input_shape=input_shape,
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
