"""Lower a Keras ``ModelSpec`` into an IR graph through the converter table.

Two drivers share one per-layer step (``Lowering.call``): a Sequential model
is a chain (each layer reads the previous layer's result); a Functional model
is a DAG walked from its recorded wiring (``keydnn.frontends.keras.functional``).
Nested models are inlined, shared layers become one node per call over one
set of constants. Subclassed models have no recorded graph and are refused.

In strict mode every problem of every layer is collected before raising, so a
user sees the whole list at once -- root causes only: a layer whose input
shape is unknown because an earlier layer was refused is not a problem of its
own (it is counted in one note that the rest was not checked), and a layer
refused only for its fused activation keeps its output shape, so the layers
after it are still checked. In non-strict mode an unconvertible layer
becomes an ``opaque`` placeholder node (and a warning); the graph can then be
inspected but never run.
"""

from __future__ import annotations

import json
import logging
import warnings
from typing import Sequence

import numpy as np
from pydantic import ValidationError

from keydnn.errors import KerasInteropError, KeydnnError, Problem
from keydnn.frontends.keras.graph_context import (
    IGNORED_AT_INFERENCE,
    MASK_PASSING,
    MASK_REFUSED,
    MULTI_INPUT_LAYERS,
    NESTED_MODEL_CLASSES,
    FrontendResult,
    GraphLayerContext,
    is_functional,
    unchecked_note,
)
from keydnn.frontends.keras.operations import OPERATION_MODULES, is_operation
from keydnn.frontends.keras.registry import (
    CONVERTERS,
    ConversionOptions,
    LayerContext,
    Unconvertible,
)
from keydnn.frontends.keras.spec import LayerSpec, ModelSpec
from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import Opaque
from keydnn.ir.types import TensorType, Value

__all__ = ["FrontendResult", "lower_model", "IGNORED_AT_INFERENCE", "GraphLayerContext", "Lowering",
           "MULTI_INPUT_LAYERS", "NESTED_MODEL_CLASSES", "is_functional", "NOT_CHECKED", "unchecked_note"]

logger = logging.getLogger(__name__)

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


#: The reason an ``opaque`` node gives when its layer was skipped, not refused (see ``Lowering.unchecked``).
NOT_CHECKED = "not checked: its input shape is unknown after an unsupported layer"


_LAYOUT_BY_RANK = {2: "NC"}
#: Integer Keras input dtypes (token ids for an Embedding) -> the IR input dtype.
_INTEGER_INPUTS = {"int32": "int32", "int64": "int64", "int16": "int32", "int8": "int32", "uint8": "int32",
                   "uint16": "int32", "uint32": "int64", "uint64": "int64"}
_SPATIAL_LAYOUTS = {4: ("NCHW", "NHWC"), 3: ("NCW", "NWC")}


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
        #: Layers not checked because an earlier unsupported layer left their input shape unknown.
        self.unchecked: list[str] = []
        self._records: dict[str, dict] = {}
        #: value -> its Keras mask value (sequence models).
        self.masks: dict[str, str] = {}

    # -- values -------------------------------------------------------------------
    def input_value(self, name: str, shape: Sequence[int | None], where: str = "input_shape") -> Value:
        """A graph input of batch shape ``shape`` (batch symbolic ``N``; a dynamic dim is a problem)."""
        shape = list(shape)
        if not shape:
            self.problems.append(Problem("the model has no input shape; build it with an Input layer or input_shape"))
            shape = [None]
        dims: list[int | str] = ["N"]
        for i, d in enumerate(shape[1:], start=1):
            if d is None and i == 1 and len(shape) >= 2:
                dims.append("T")  # a variable-length sequence: the symbolic time axis
            elif d is None:
                self.problems.append(Problem(f"input dimension {i} is dynamic (None)", field=where,
                                             value=list(shape), supported="static non-batch dimensions"))
                dims.append(f"D{i}")
            else:
                dims.append(int(d))
        layout = _LAYOUT_BY_RANK.get(len(dims), "ANY")
        dtype = _INTEGER_INPUTS.get(str(self._keras_input_dtype(name)), self.options.dtype)
        if dtype != self.options.dtype:
            layout = "ANY"  # token ids, not features
        value = Value(name=name, type=TensorType(shape=tuple(dims), dtype=dtype, layout=layout))
        self.types[name] = value.type
        self.taken.add(name)
        return value

    def _keras_input_dtype(self, name: str) -> object:
        """The dtype the Keras input layer ``name`` declares (the model's input dtype for a stack)."""
        for entry in self.spec.input_layer_configs:
            if entry.get("name") == name:
                return (entry.get("config") or {}).get("dtype")
        return self.spec.input_dtype if name == "input" or len(self.spec.input_layer_configs) <= 1 else None

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
                                known_types=self.types, taken=self.taken, in_mask=self.masks.get(x),
                                call_kwargs=dict(call_kwargs or {}), raw_call=raw_call)
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
        elif ctx.in_mask is not None and layer.class_name in MASK_REFUSED:
            ctx.refuse("receives a sequence mask (from Embedding(mask_zero=True) or Masking), which this layer "
                       "would use; keydnn does not compute its masked form", field="mask",
                       supported="masks into recurrent layers, through Dense/Dropout/activations/normalization")
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
            kept_type = self._type_despite_activation(before, first_node)
            for node in self.nodes[first_node:]:
                self.taken.discard(node.name)
                self.types.pop(node.outputs[0].name, None)
            del self.nodes[first_node:]
            for key in set(self.weights) - weights_before:
                del self.weights[key]
            if any(self.types.get(i) is None for i in inputs) and len(self.problems) == before:
                # Only a consequence of an earlier unconvertible layer: not a problem of its own. The error
                # says once that the layers after the first problems were not checked.
                self.unchecked.append(layer.name)
                reason = NOT_CHECKED
            else:
                reason = "; ".join(p.message for p in self.problems[before:]) or "unsupported"
            result = self._opaque(layer, inputs, name, reason, kept_type)
        else:
            result = ctx.x
            for node in self.nodes[first_node:]:  # also nodes a converter appended by hand
                self.taken.add(node.name)
                self.types.setdefault(node.outputs[0].name, node.outputs[0].type)
            mask = ctx.out_mask
            if mask is None and ctx.in_mask is not None and layer.class_name in MASK_PASSING:
                mask = ctx.in_mask
            if mask is not None:
                self.masks[result] = mask
        self._record(layer, [n.name for n in self.nodes[first_node:]])
        return [result] + ([] if failed else list(ctx.extra_results))

    def placeholder(self, layer: LayerSpec, inputs: Sequence[str], name: str, problems: Sequence[Problem]) -> str:
        """Record ``problems`` for a call that cannot be converted; an ``opaque`` node stands in for it."""
        self.problems.extend(problems)
        reason = "; ".join(p.message for p in problems) or "unsupported"
        out = self._opaque(layer, inputs, name, reason)
        self._record(layer, [out])
        return out

    def _type_despite_activation(self, before: int, first_node: int) -> TensorType | None:
        """The layer's output type when its only problems are fused-activation refusals.

        A fused activation never changes the shape, so the layers after it can still be checked (and
        report their own problems) instead of being hidden behind an unknown input shape.
        """
        new = self.problems[before:]
        if not new or not all(p.field == "activation" for p in new) or len(self.nodes) == first_node:
            return None
        return self.nodes[-1].outputs[0].type

    def _opaque(self, layer: LayerSpec, inputs: Sequence[str], name: str, reason: str,
                out_type: TensorType | None = None) -> str:
        op = Opaque(keras_class=layer.class_name, reason=reason,
                    output_shape=out_type.shape if out_type is not None else None)
        out = self.node_name(name)
        self.nodes.append(Node(name=out, op=op, inputs=tuple(inputs), outputs=(Value(name=out, type=out_type),),
                               source=layer.name))
        self.taken.add(out)
        self.types[out] = out_type
        return out

    def _record(self, layer: LayerSpec, nodes: list[str]) -> None:
        record = self._records.get(layer.name)
        if record is None:
            record = self._records[layer.name] = {"keras_name": layer.name, "keras_class": layer.class_name,
                                                  "nodes": [], "params": int(sum(np.size(w) for _, w in layer.weights))}
        record["nodes"].extend(nodes)

    # -- the whole graph --------------------------------------------------------------
    def finish(self, inputs: Sequence[Value], outputs: Sequence[str], *, functional: bool = False,
               output_names: Sequence[str] = ()) -> FrontendResult:
        """Raise (strict) or warn about the problems; build the graph."""
        spec, problems = self.spec, self.problems
        notes = [unchecked_note(self.unchecked)] if self.unchecked else []
        if problems and self.options.strict:
            n = len({(p.layer_index, p.layer_name) for p in problems})
            first = problems[0]
            where = " ".join(filter(None, [f"layer {first.layer_index}" if first.layer_index is not None else None,
                                           repr(first.layer_name) if first.layer_name is not None else None]))
            count = f"{len(problems)} problem(s) in {n} place(s); the first: " if len(problems) > 1 else ""
            raise KerasInteropError(f"cannot convert model {spec.name!r}: {count}"
                                    f"{where + ': ' if where else ''}{first.message.split(': pass ')[0]}",
                                    problems, notes)
        if problems:
            warnings.warn(f"model {spec.name!r} converted with {len(problems)} problem(s); the layers named below are "
                          "kept as opaque placeholders, so the model can be inspected (inspect-ir) but not run:\n"
                          + "\n".join([f"  - {p}" for p in problems] + [f"  {t}" for t in notes]), stacklevel=4)
        source = {"format": spec.source_format, "keras_version": spec.keras_version, "model_name": spec.name,
                  "model_class": spec.model_class}
        inputs = tuple(_with_input_layout(v, self.nodes) for v in inputs)
        graph = Graph.build(name=_graph_name(spec.name), inputs=inputs, outputs=tuple(outputs),
                            nodes=tuple(self.nodes), weights=self.weights,
                            metadata={"source_format": spec.source_format})
        return FrontendResult(graph=graph, layers=list(self._records.values()), source=source, problems=problems,
                              functional=functional, output_names=_unique(output_names or outputs))


def lower_model(spec: ModelSpec, options: ConversionOptions) -> FrontendResult:
    """Convert every layer of ``spec``; raise KerasInteropError (strict) or keep placeholders."""
    if is_functional(spec):
        from keydnn.frontends.keras.functional import lower_functional

        return lower_functional(spec, options)
    if spec.model_class != "Sequential":
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
    return low.finish([inp], [x], output_names=[spec.layers[-1].name] if spec.layers else [x])


def _unique(names: Sequence[str]) -> list[str]:
    """``names`` with repeats made distinct (``out``, ``out_1``): one output layer can give several outputs."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, k = name, 0
        while candidate in seen:
            k += 1
            candidate = f"{name}_{k}"
        seen.add(candidate)
        out.append(candidate)
    return out


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
