"""What lowering shares with the converters: the layer-class tables converters extend, the per-call
``GraphLayerContext``, and the ``FrontendResult`` a lowering returns (``lower`` drives them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from keydnn.errors import Problem
from keydnn.frontends.keras.registry import LayerContext
from keydnn.frontends.keras.spec import ModelSpec
from keydnn.ir.graph import Graph
from keydnn.ir.types import TensorType

__all__ = ["FrontendResult", "GraphLayerContext", "IGNORED_AT_INFERENCE", "MULTI_INPUT_LAYERS", "MASK_PASSING",
           "MASK_REFUSED", "NESTED_MODEL_CLASSES", "is_functional", "unchecked_note"]

#: Layers that are the identity at inference time; they produce no node.
IGNORED_AT_INFERENCE: frozenset[str] = frozenset()

#: Layer classes whose converters take several input tensors (``GraphLayerContext.inputs``).
MULTI_INPUT_LAYERS: set[str] = set()
#: Layer classes through which Keras passes a sequence mask on unchanged (``supports_masking`` without a
#: ``compute_mask`` of their own). Converters of mask-making or mask-using layers set ``out_mask`` themselves.
MASK_PASSING: set[str] = {
    "Dense", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "ActivityRegularization", "Activation",
    "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax", "BatchNormalization", "LayerNormalization",
}
#: Layer classes that would compute with a mask in a way keydnn does not: refused when a mask reaches them.
MASK_REFUSED: set[str] = {
    "GlobalAveragePooling1D", "GlobalMaxPooling1D", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum",
    "Concatenate", "Attention", "AdditiveAttention", "MultiHeadAttention",
}
#: Layer classes that are whole models: inlined, never converted as one layer.
NESTED_MODEL_CLASSES: frozenset[str] = frozenset({"Sequential", "Functional", "Model"})

_SEQUENTIAL = ("Sequential",)


def unchecked_note(names: Sequence[str]) -> str:
    """One line for the layers skipped after the first problems (they may well be supported)."""
    shown = ", ".join(repr(n) for n in names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return (f"note: {len(names)} later layer(s) ({shown}) were not checked, because their input shape is unknown "
            "after an unsupported layer; fix the problems above and convert again")


@dataclass
class FrontendResult:
    """The lowered graph plus what the artifact records about the source."""

    graph: Graph
    layers: list[dict] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: True for a Functional model (a graph): the runtime class is ``keydnn.Model``, not ``Sequential``.
    functional: bool = False
    #: The outputs as Keras names them (its output layers' names), in order; the graph's values may be
    #: named after the last node lowered from them (``dense_1.softmax``).
    output_names: list[str] = field(default_factory=list)


@dataclass
class GraphLayerContext(LayerContext):
    """A ``LayerContext`` for one call of a layer in a graph.

    ``inputs`` / ``input_types`` are every tensor the call receives (``x`` is
    the first); merge converters read them. ``node_name`` names this call's
    nodes (``dense``, ``dense.1`` for a shared layer's second call), while
    constants keep the layer's name, so every call shares one weight set.
    """

    inputs: tuple[str, ...] = ()
    input_types: tuple[TensorType | None, ...] = ()
    node_name: str | None = None
    known_types: dict[str, TensorType | None] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    #: The Keras mask (a (N, T) value) of the main input, if any; a converter that makes or keeps a mask
    #: sets ``out_mask`` (``MASK_PASSING`` layers keep theirs without one).
    in_mask: str | None = None
    out_mask: str | None = None
    #: Results after the first (``return_state``, ``Bidirectional(merge_mode=None)``), in Keras's order.
    extra_results: list[str] = field(default_factory=list)
    #: Keyword arguments of the call, for layers of ``functional.TENSOR_KWARGS`` (tensors as value names).
    call_kwargs: dict = field(default_factory=dict)
    #: The call's raw inbound-node entry (Keras 2 TFOpLambda converters read their arguments from it).
    raw_call: object = None

    def _node_name(self, suffix: str | None) -> str:
        base = self.node_name or self.layer.name
        name = base if suffix is None else f"{base}.{suffix}"
        if name in self.taken:
            k = 1
            while f"{name}_{k}" in self.taken:
                k += 1
            name = f"{name}_{k}"
        return name

    def _emitted(self, name: str, out_type: TensorType | None) -> None:
        self.taken.add(name)
        self.known_types[name] = out_type

    def type_of(self, name: str) -> TensorType | None:
        if name == self.x:
            return self.x_type
        if name in self.known_types:
            return self.known_types[name]
        return super().type_of(name)


def is_functional(spec: ModelSpec) -> bool:
    """Whether ``spec`` records a layer graph (Functional wiring) rather than a stack."""
    if spec.model_class in _SEQUENTIAL:
        return False
    return spec.input_layers is not None or any(layer.inbound_nodes is not None for layer in spec.layers)
