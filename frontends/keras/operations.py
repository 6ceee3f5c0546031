"""Telling Keras 3 operations (graph nodes that are ``keras.ops`` calls or Python operators on tensors)
from layers, in every source form.

``.keras`` archives say it outright: an operation's ``module`` is
``keras.src.ops.<family>`` (or ``keras.src.activations.activations`` for
``keras.activations.*`` called on a tensor). Keras 3's ``.h5`` model_config
records no ``module`` at all, so there the class name alone would make
``ops.softmax(x)`` look like the layer ``Softmax``. What separates them: the
file's ``model_weights`` attribute ``layer_names`` lists ``model.layers`` (every
layer, with or without weights) and never an operation, and an operation's
config has no ``trainable`` (only ``name`` and its own arguments; a few
weightless layers, e.g. SpatialDropout2D, lack ``trainable`` too, so the config
alone is not enough). The reader records the operation module for such
entries, and both forms reach the same converter.
"""

from __future__ import annotations

from keydnn.frontends.keras.spec import LayerSpec

__all__ = ["OPERATION_MODULES", "H5_OPERATION_MODULE", "is_operation", "looks_like_operation"]

#: Modules of Keras 3 operation classes.
OPERATION_MODULES: tuple[str, ...] = ("keras.src.ops", "keras.ops", "keras.src.activations")
#: The module the reader records for an operation read from a Keras 3 ``.h5`` file (which names none).
H5_OPERATION_MODULE = "keras.src.ops"


def looks_like_operation(config: object) -> bool:
    """A config entry that may be an operation: a ``name`` and no ``trainable`` (checked with ``layer_names``)."""
    return isinstance(config, dict) and "trainable" not in config and "name" in config


def is_operation(layer: LayerSpec) -> bool:
    """Whether the node ``layer`` is a Keras 3 operation rather than a layer (the reader sets its module)."""
    return layer.module is not None and layer.module.startswith(OPERATION_MODULES)
