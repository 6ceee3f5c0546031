"""Pure-data description of a Keras model, independent of TensorFlow.

The reader (the ``reader`` package) turns every supported source -- a ``.keras`` zip,
an ``.h5`` file written by Keras 3 or by Keras 2 / tf_keras, or a live model
object -- into these classes, so converters see one normalized shape and never
have to know which Keras wrote the model or import TensorFlow to inspect it.

Normalization guarantees (see ``reader.normalize_layer_config``):

* ``LayerSpec.config`` is the layer's raw config dict with every key kept, but
  tuples are lists, NumPy scalars/arrays are plain Python values, a builtin
  activation is a plain string (``"relu"``) while custom/lambda activations
  stay as their serialized dict, and ``dtype`` is the policy *name* string
  (``"float32"``, ``"mixed_float16"``).
* ``LayerSpec.weights`` are ``(name, array)`` pairs in the layer's own weight
  order (the order of ``layer.get_weights()``); names are the variable's short
  name (``"kernel"``, ``"bias"``, ``"gamma"``...), without scope or ``":0"``.
  Keras 2's ``DepthwiseConv2D`` ``"depthwise_kernel"`` is reported under its
  Keras 3 name ``"kernel"`` so both versions look alike. Arrays are read-only.
  Where short names would collide (wrappers such as ``Bidirectional``, nested
  models) the name keeps the path below the layer, e.g.
  ``"forward_lstm/lstm_cell/kernel"``; ``.keras`` archives only store such
  weights by position, so there they are named ``"<sub/path>/var<i>"`` in
  storage order. Unknown classes in ``.keras`` archives get ``"var<i>"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SOURCE_FORMATS", "LayerSpec", "ModelSpec"]

logger = logging.getLogger(__name__)

#: Every value ``ModelSpec.source_format`` can take.
SOURCE_FORMATS: tuple[str, ...] = (
    "keras3-zip",
    "keras3-h5",
    "keras2-h5",
    "live-keras3",
    "live-tf_keras",
)


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the model, as data.

    ``index`` is the layer's position in ``model.layers`` (InputLayer entries
    are never LayerSpecs; in a Functional model they still occupy an index, as
    they do in ``model.layers``). ``inbound_nodes`` is the raw Functional
    wiring (``None`` for Sequential models); it is recorded, not interpreted.
    """

    index: int
    class_name: str
    name: str
    config: dict[str, Any]
    weights: tuple[tuple[str, np.ndarray], ...]
    module: str | None = None
    registered_name: str | None = None
    inbound_nodes: list[Any] | None = field(default=None, compare=False)

    def __eq__(self, other: object) -> bool:
        """Field-wise equality with weights compared by name, dtype, shape and value.

        The generated ``__eq__`` would compare arrays with ``==`` and raise
        "truth value is ambiguous"; specs from two sources must be comparable.
        """
        if not isinstance(other, LayerSpec):
            return NotImplemented
        head = (self.index, self.class_name, self.name, self.module, self.registered_name)
        other_head = (
            other.index,
            other.class_name,
            other.name,
            other.module,
            other.registered_name,
        )
        if head != other_head or self.weight_names != other.weight_names:
            return False
        if self.config != other.config:
            return False
        return all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            for (_, a), (_, b) in zip(self.weights, other.weights, strict=True)
        )

    def __hash__(self) -> int:
        # config (a dict) and arrays are unhashable; hash what __eq__ compares first.
        return hash((self.index, self.class_name, self.name, self.weight_names))

    @property
    def weight_names(self) -> tuple[str, ...]:
        """Names of the weights, in order (cheap to compare in tests/errors)."""
        return tuple(name for name, _ in self.weights)

    def weight(self, name: str) -> np.ndarray | None:
        """The array of the weight called ``name``, or ``None`` when absent."""
        for weight_name, array in self.weights:
            if weight_name == name:
                return array
        return None


@dataclass(frozen=True)
class ModelSpec:
    """A whole model, as data; the converter decides what it can accept.

    ``input_shape`` includes the batch dimension (usually ``None``); it is
    ``()`` when the source does not record any input shape (an unbuilt
    model, a subclassed model). For multi-input Functional models it is the
    shape of the first input. ``input_layers``/``output_layers`` are the raw
    Functional config entries (``None`` for other model classes).
    """

    model_class: str
    name: str
    input_shape: tuple[int | None, ...]
    input_dtype: str
    layers: tuple[LayerSpec, ...]
    source_format: str
    keras_version: str | None
    input_layers: list[Any] | None = field(default=None, compare=False)
    output_layers: list[Any] | None = field(default=None, compare=False)
    #: Every InputLayer entry of the config as ``{"name": ..., "config": {...}}`` (normalized
    #: config), in config order: a Functional model's inputs' shapes and dtypes.
    input_layer_configs: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    #: The file the spec was read from (None for a live model): recorded in the artifact with its SHA-256.
    source_path: str | None = field(default=None, compare=False)

    @property
    def is_sequential(self) -> bool:
        """True when the model is a plain ``Sequential`` (the supported kind)."""
        return self.model_class == "Sequential"
