"""Lower a Keras ``ModelSpec`` into an IR graph through the converter table.

Two drivers share one per-layer step (``Lowering.call``): a Sequential model
is a chain (each layer reads the previous layer's result); a Functional model
is a DAG walked from its recorded wiring (``keydnn.frontends.keras.functional``).
Nested models are inlined, shared layers become one node per call over one
set of constants. Subclassed models have no recorded graph and are refused.

In strict mode every problem of every layer is collected before raising, so a
user sees the whole list at once. In non-strict mode an unconvertible layer
becomes an ``opaque`` placeholder node (and a warning); the graph can then be
inspected but never run.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from pydantic import ValidationError

from keydnn.errors import KerasInteropError, KeydnnError, Problem
from keydnn.frontends.keras.operations import OPERATION_MODULES, is_operation
from keydnn.frontends.keras.registry import CONVERTERS, ConversionOptions, LayerContext, Unconvertible
from keydnn.frontends.keras.spec import LayerSpec, ModelSpec
from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import Opaque
from keydnn.ir.types import TensorType, Value

__all__ = ["FrontendResult", "lower_model", "IGNORED_AT_INFERENCE", "GraphLayerContext", "Lowering",
           "MULTI_INPUT_LAYERS", "NESTED_MODEL_CLASSES", "is_functional"]

logger = logging.getLogger(__name__)

#: Layers that are the identity at inference time; they produce no node.
IGNORED_AT_INFERENCE: frozenset[str] = frozenset()

#: Layer classes whose converters take several input tensors (``GraphLayerContext.inputs``).
MULTI_INPUT_LAYERS: set[str] = set()
#: Layer classes that are whole models: inlined, never converted as one layer.
NESTED_MODEL_CLASSES: frozenset[str] = frozenset({"Sequential", "Functional", "Model"})

_SEQUENTIAL = ("Sequential",)
_OPS_MODULES = OPERATION_MODULES
_BUILTIN_MODULES = ("keras.layers", "keras.src.layers", "keras.src.models", "keras.models", "keras",
                    "tf_keras.layers", "tf_keras.src.layers")


def _custom_class(layer: LayerSpec) -> str | None:
    """Describe a layer whose serialized identity is a user class (even one named like a built-in).

    Keras 3 writes ``registered_name`` only for registered custom objects
    (``"package>Name"``) and a ``module`` outside keras for user classes.
    """
    registered = layer.registered_name
    if registered not in (None, layer.class_name) and not str(registered).startswith("keras"):
        return f"registered as {registered!r}"
    module = layer.module
    if module is not None and not module.startswith(_BUILTIN_MODULES) and not module.startswith(_OPS_MODULES):
        return f"from module {module!r}"
    return None


#: What a converter computing with a config value of an unexpected type or size can raise. The converters
#: check their values first (``values.py``); this is the net under them, so that a value nobody thought
#: of is still a ``KerasInteropError`` naming the layer and field, never a bare ``TypeError``.
_CONVERTER_FAULTS = (TypeError, ValueError, ArithmeticError, KeyError, IndexError, AttributeError, RecursionError)
#: Start of the message of such a refusal (the fuzz tests count these separately from checked refusals).
CONVERTER_FAULT_MESSAGE = "config value the converter cannot use"


def _converter_fault(ctx: LayerContext, constraints: str, exc: BaseException) -> None:
    """Record a converter's unexpected exception as a problem with the field it read last."""
    logger.debug("converter for %s failed on layer %r", ctx.layer.class_name, ctx.layer.name, exc_info=True)
    key = ctx.last_field
    value = ctx.layer.config.get(key) if key is not None else None
    shown = repr(value)
    ctx.refuse(f"{CONVERTER_FAULT_MESSAGE} ({type(exc).__name__}: {str(exc)[:200]})",
               field=key, value=value if len(shown) <= 200 else shown[:200] + "...",
               supported=constraints or None)


_LAYOUT_BY_RANK = {2: "NC"}
_SPATIAL_LAYOUTS = {4: ("NCHW", "NHWC"), 3: ("NCW", "NWC")}


@dataclass
class FrontendResult:
    """The lowered graph plus what the artifact records about the source."""

    graph: Graph
    layers: list[dict] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    #: True for a Functional model (a graph): the runtime class is ``keydnn.Model``, not ``Sequential``.
    functional: bool = False


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

    def _type_of(self, name: str) -> TensorType | None:
        if name == self.x:
            return self.x_type
        if name in self.known_types:
            return self.known_types[name]
        return super()._type_of(name)


def is_functional(spec: ModelSpec) -> bool:
    """Whether ``spec`` records a layer graph (Functional wiring) rather than a stack."""
    if spec.model_class in _SEQUENTIAL:
        return False
    return spec.input_layers is not None or any(layer.inbound_nodes is not None for layer in spec.layers)


class Lowering:
    """The graph being built, shared by the drivers: nodes, constants, problems, layer records."""

    def __init__(self, spec: ModelSpec, options: ConversionOptions) -> None:
        self.spec = spec
        self.options = options
        self.problems: list[Problem] = []
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self.types: dict[str, TensorType | None] = {}
        self.taken: set[str] = set()
        self._records: dict[str, dict] = {}

    # -- values -------------------------------------------------------------------
    def input_value(self, name: str, shape: Sequence[int | None], where: str = "input_shape") -> Value:
        """A graph input of batch shape ``shape`` (batch symbolic ``N``; a dynamic dim is a problem)."""
        shape = list(shape)
        if not shape:
            self.problems.append(Problem("the model has no input shape; build it with an Input layer or input_shape"))
            shape = [None]
        dims: list[int | str] = ["N"]
        for i, d in enumerate(shape[1:], start=1):
            if d is None:
                self.problems.append(Problem(f"input dimension {i} is dynamic (None)", field=where,
                                             value=list(shape), supported="static non-batch dimensions"))
                dims.append(f"D{i}")
            else:
                dims.append(int(d))
        layout = _LAYOUT_BY_RANK.get(len(dims), "ANY")
        value = Value(name=name, type=TensorType(shape=tuple(dims), dtype=self.options.dtype, layout=layout))
        self.types[name] = value.type
        self.taken.add(name)
        return value

    def node_name(self, base: str) -> str:
        """``base``, or ``base_1``... when a node or value already has that name."""
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        return name

    # -- one call of one layer ------------------------------------------------------
    def call(self, layer: LayerSpec, inputs: Sequence[str], *, name: str | None = None,
             raw_call: object = None, call_kwargs: dict | None = None) -> list[str]:
        """Convert one application of ``layer`` to ``inputs``; its result values (several for a model).

        ``name`` names the call's nodes (default: the layer's name). Failures
        are recorded as problems and leave an ``opaque`` node in their place.
        """
        name = name or layer.name
        if layer.class_name in NESTED_MODEL_CLASSES and isinstance(layer.config.get("layers"), list):
            from keydnn.frontends.keras.functional import inline_model

            return inline_model(self, layer, list(inputs), name)
        before = len(self.problems)
        first_node = len(self.nodes)
        weights_before = set(self.weights)
        x = inputs[0] if inputs else ""
        x_type = self.types.get(x) if inputs else None
        ctx = GraphLayerContext(layer=layer, x=x, x_type=x_type, options=self.options, problems=self.problems,
                                nodes=self.nodes, weights=self.weights, inputs=tuple(inputs),
                                input_types=tuple(self.types.get(i) for i in inputs), node_name=name,
                                known_types=self.types, taken=self.taken, call_kwargs=dict(call_kwargs or {}),
                                raw_call=raw_call)
        entry = CONVERTERS.get(layer.class_name)
        failed = False
        custom = _custom_class(layer)
        if custom is not None:
            ctx.refuse(f"is a custom layer class ({custom}), not the built-in {layer.class_name}; keydnn never "
                       "loads or runs code from a model file", field="registered_name", value=layer.registered_name,
                       supported="built-in Keras layers (module keras.layers)")
            failed = True
        elif is_operation(layer):
            from keydnn.frontends.keras.convert_ops import convert_operation

            try:
                convert_operation(ctx, raw_call, tuple(inputs))
            except Unconvertible:
                failed = True
            except ValidationError as exc:
                ctx.refuse("invalid configuration: " + "; ".join(e["msg"] for e in exc.errors()))
                failed = True
            if not failed:
                for key in ctx.unconsumed():
                    ctx.refuse(f"config field {key!r} is not understood by keydnn", field=key,
                               value=layer.config.get(key), supported="the fields documented for this operation")
        elif entry is None:
            if layer.class_name in IGNORED_AT_INFERENCE and len(inputs) == 1:
                self._record(layer, [])
                return [x]
            ctx.refuse(f"unsupported layer class {layer.class_name!r}", supported=", ".join(sorted(CONVERTERS)))
            failed = True
        elif len(inputs) != 1 and layer.class_name not in MULTI_INPUT_LAYERS:
            ctx.refuse(f"takes one input tensor, but is called on {len(inputs)}", field="inputs",
                       value=list(inputs), supported="one input tensor per call")
            failed = True
        else:
            faulted = False
            try:
                entry.fn(ctx)
            except Unconvertible:
                failed = True
            except ValidationError as exc:
                detail = "; ".join(e["msg"] for e in exc.errors())
                ctx.refuse(f"invalid configuration: {detail}")
                failed = True
            except KeydnnError:
                raise  # raised on purpose, with its own message
            except _CONVERTER_FAULTS as exc:
                _converter_fault(ctx, entry.constraints, exc)
                failed = faulted = True
            # (after a fault the converter stopped early: the fields it never reached are unchecked, not unknown)
            for key in [] if faulted else ctx.unconsumed():
                ctx.refuse(f"config field {key!r} is not understood by keydnn", field=key,
                           value=layer.config.get(key), supported="the fields documented for this layer")
        failed = failed or len(self.problems) > before
        if failed:
            for node in self.nodes[first_node:]:
                self.taken.discard(node.name)
                self.types.pop(node.outputs[0].name, None)
            del self.nodes[first_node:]
            for key in set(self.weights) - weights_before:
                del self.weights[key]
            if any(self.types.get(i) is None for i in inputs) and len(self.problems) == before:
                # Only a consequence of an earlier unconvertible layer: say so once.
                self.problems.append(Problem("cannot convert: the input shape is unknown after an unsupported layer",
                                             layer.index, layer.name, layer.class_name))
            reason = "; ".join(p.message for p in self.problems[before:]) or "unsupported"
            result = self._opaque(layer, inputs, name, reason)
        else:
            result = ctx.x
            for node in self.nodes[first_node:]:  # also nodes a converter appended by hand
                self.taken.add(node.name)
                self.types.setdefault(node.outputs[0].name, node.outputs[0].type)
        self._record(layer, [n.name for n in self.nodes[first_node:]])
        return [result]

    def placeholder(self, layer: LayerSpec, inputs: Sequence[str], name: str, problems: Sequence[Problem]) -> str:
        """Record ``problems`` for a call that cannot be converted; an ``opaque`` node stands in for it."""
        self.problems.extend(problems)
        reason = "; ".join(p.message for p in problems) or "unsupported"
        out = self._opaque(layer, inputs, name, reason)
        self._record(layer, [out])
        return out

    def _opaque(self, layer: LayerSpec, inputs: Sequence[str], name: str, reason: str) -> str:
        op = Opaque(keras_class=layer.class_name, reason=reason)
        out = self.node_name(name)
        self.nodes.append(Node(name=out, op=op, inputs=tuple(inputs), outputs=(Value(name=out),), source=layer.name))
        self.taken.add(out)
        self.types[out] = None
        return out

    def _record(self, layer: LayerSpec, nodes: list[str]) -> None:
        record = self._records.get(layer.name)
        if record is None:
            record = self._records[layer.name] = {"keras_name": layer.name, "keras_class": layer.class_name,
                                                  "nodes": []}
        record["nodes"].extend(nodes)

    # -- the whole graph --------------------------------------------------------------
    def finish(self, inputs: Sequence[Value], outputs: Sequence[str], *, functional: bool = False) -> FrontendResult:
        """Raise (strict) or warn about the problems; build the graph."""
        spec, problems = self.spec, self.problems
        if problems and self.options.strict:
            n = len({(p.layer_index, p.layer_name) for p in problems})
            raise KerasInteropError(
                f"cannot convert model {spec.name!r}: {len(problems)} problem(s) in {n} place(s)", problems)
        if problems:
            warnings.warn(f"model {spec.name!r} converted with {len(problems)} problem(s); unsupported layers are "
                          "opaque placeholders and the model cannot run:\n"
                          + "\n".join(f"  - {p}" for p in problems), stacklevel=4)
        source = {"format": spec.source_format, "keras_version": spec.keras_version, "model_name": spec.name,
                  "model_class": spec.model_class}
        inputs = tuple(_with_input_layout(v, self.nodes) for v in inputs)
        graph = Graph.build(name=_graph_name(spec.name), inputs=inputs, outputs=tuple(outputs),
                            nodes=tuple(self.nodes), weights=self.weights,
                            metadata={"source_format": spec.source_format})
        return FrontendResult(graph=graph, layers=list(self._records.values()), source=source, problems=problems,
                              functional=functional)


def lower_model(spec: ModelSpec, options: ConversionOptions) -> FrontendResult:
    """Convert every layer of ``spec``; raise KerasInteropError (strict) or keep placeholders."""
    if is_functional(spec):
        from keydnn.frontends.keras.functional import lower_functional

        return lower_functional(spec, options)
    if spec.model_class not in _SEQUENTIAL:
        msg = (f"model {spec.name!r} is a subclassed model ({spec.model_class}); its call() is Python code, not a "
               "recorded layer graph, so keydnn cannot convert it. Rebuild it as a tf.keras.Sequential or a "
               "Functional model (tf.keras.Model(inputs, outputs))")
        if options.strict or not spec.layers:
            raise KerasInteropError(msg, [Problem(msg, field="model_class", value=spec.model_class,
                                                  supported="tf.keras.Sequential, Functional tf.keras.Model")])
        warnings.warn(msg + "; converting its layers as a stack", stacklevel=3)
    return _lower_sequential(spec, options)


def _lower_sequential(spec: ModelSpec, options: ConversionOptions) -> FrontendResult:
    """The chain driver: each layer reads the previous layer's result."""
    low = Lowering(spec, options)
    inp = low.input_value("input", spec.input_shape)
    x = inp.name
    for layer in spec.layers:
        (x,) = low.call(layer, [x])[:1]
    return low.finish([inp], [x])


def _with_input_layout(inp: Value, nodes: Sequence[Node]) -> Value:
    """Name an input's layout after the first layout-sensitive op it reaches (the data_format the user
    trained with)."""
    assert inp.type is not None
    if inp.type.layout != "ANY":
        return inp
    wanted = _SPATIAL_LAYOUTS.get(inp.type.rank, ())
    reached = {inp.name}
    for node in nodes:
        if not reached.intersection(node.inputs):
            continue
        layout = getattr(node.op, "layout", None)
        if layout in wanted:
            return Value(name=inp.name, type=inp.type.with_shape(inp.type.shape, layout=layout))
        reached.add(node.outputs[0].name)
    return inp


def _graph_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name or "model")
    return cleaned or "model"


def describe_config(config: dict) -> str:
    """Stable one-line text of a config (for messages)."""
    return json.dumps(config, sort_keys=True, default=str)
