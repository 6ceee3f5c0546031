"""Lower Functional Keras models (layer graphs) and inline nested models.

A Functional model records, for every layer, the calls made to it
(``inbound_nodes``) and, for every call, the tensors it read as
``(layer, node_index, tensor_index)`` references. Keras 2 and Keras 3 spell
that differently:

* Keras 2: ``[[["layer", node_index, tensor_index, {kwargs}], ...], ...]`` --
  one list of references per call;
* Keras 3: ``[{"args": [...], "kwargs": {...}}, ...]`` -- per call, the call's
  arguments, where each tensor is ``{"class_name": "__keras_tensor__",
  "config": {"shape", "dtype", "keras_history": ["layer", node_index,
  tensor_index]}}`` (a merge layer's first argument is a list of them).

Keras 2 numbers a nested model's calls after the call that built it, which
the config omits, so its references are one higher than the position in
``inbound_nodes``; the offset is read off the references themselves.

The graph is walked depth-first from the outputs, operands in order, so the
node order depends only on the wiring (every source form gives the same IR).
A shared layer gives one node per call (``dense``, ``dense.1``) over one set
of constants; a nested Sequential or Functional model is inlined, its nodes
named ``<call>/<layer>`` and its constants ``<model>/<layer>.<weight>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np

from keydnn.errors import KerasInteropError, Problem
from keydnn.frontends.keras.lower import NESTED_MODEL_CLASSES, FrontendResult, Lowering
from keydnn.frontends.keras.operations import is_operation
from keydnn.frontends.keras.registry import ConversionOptions
from keydnn.frontends.keras.spec import LayerSpec, ModelSpec

__all__ = ["lower_functional", "inline_model", "parse_calls", "Ref", "Call", "nested_layers", "TENSOR_KWARGS", "TF_OP_LAYERS"]

logger = logging.getLogger(__name__)

#: (layer name, node index, tensor index): one tensor of a Functional model.
Ref = tuple[str, int, int]

#: Call keyword arguments that do not change what a layer computes at inference, with the values allowed.
_HARMLESS_KWARGS: dict[str, tuple[Any, ...]] = {"mask": (None,), "training": (None, False)}


@dataclass
class Call:
    """One recorded call of a layer: the tensors it reads, and what keydnn cannot honour about it."""

    refs: list[Ref] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: The call passed a mask tensor (Keras 3 records the mask it propagated): keydnn's own mask must exist.
    mask_tensor: bool = False
    #: Layers of ``TENSOR_KWARGS``: keyword arguments that are not tensors, and the names of those that are
    #: (their tensors are the last ``len(tensor_kwargs)`` refs, in this order).
    kwargs: dict[str, Any] = field(default_factory=dict)
    tensor_kwargs: list[str] = field(default_factory=list)


#: Keras 2's layers wrapping a TensorFlow function call (``x * 0.5``, ``tf.reduce_mean``, ``x[:, 1:]``): their
#: calls carry constants and tensors among the keyword arguments (``frontends.keras.convert_tfop``).
TF_OP_LAYERS: frozenset[str] = frozenset({"TFOpLambda", "SlicingOpLambda"})

def tf_op_entries(raw: list) -> list:
    """A TFOpLambda call as a list of entries: Keras 2 writes a one-tensor call as the bare entry
    ``[layer, node, index, kwargs]`` and a call on a list (concat, stack) as a list of entries."""
    return [raw] if raw and isinstance(raw[0], str) else raw


#: Layers whose calls take tensors as keyword arguments (MultiHeadAttention's value, key, attention_mask), by
#: class: the keyword names, in the order their tensors follow the positional ones. Their converters read
#: ``GraphLayerContext.call_kwargs`` and check the other keyword arguments themselves.
TENSOR_KWARGS: dict[str, tuple[str, ...]] = {}


def _layer_kwargs(kwargs: Any, call: Call, names: tuple[str, ...], keras2: bool) -> None:
    if not isinstance(kwargs, dict):
        return
    as_ref = _as_ref if keras2 else _keras_tensor
    for key, value in kwargs.items():
        found: list[Ref] = []
        if not keras2:
            _tensors(value, found, [])
        if key in names and as_ref(value) is not None:
            continue
        if found or (keras2 and as_ref(value) is not None):
            call.problems.append(f"call argument {key!r} is a tensor; keydnn wires {', '.join(names)} only")
        else:
            call.kwargs[key] = value
    for key in names:
        ref = as_ref(kwargs.get(key))
        if ref is not None:
            call.refs.append(ref)
            call.tensor_kwargs.append(key)


# --------------------------------------------------------------------------- #
# Reading the wiring
# --------------------------------------------------------------------------- #


def _as_ref(value: Any) -> Ref | None:
    """A ``[name, node, tensor]`` triple (Keras 2 entries may carry a kwargs dict as 4th item)."""
    if (isinstance(value, (list, tuple)) and len(value) in (3, 4) and isinstance(value[0], str)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value[1:3])):
        return (value[0], int(value[1]), int(value[2]))
    return None


def _keras_tensor(value: Any) -> Ref | None:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        config = value.get("config")
        if isinstance(config, dict):
            return _as_ref(config.get("keras_history"))
    return None


def _tensors(value: Any, out: list[Ref], others: list[Any]) -> None:
    """Keras tensors of a Keras 3 call argument, in order; anything else goes to ``others``."""
    ref = _keras_tensor(value)
    if ref is not None:
        out.append(ref)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _tensors(v, out, others)
    elif isinstance(value, dict) and "class_name" not in value:
        for key in sorted(value):
            _tensors(value[key], out, others)
    else:
        others.append(value)


#: Call keywords whose tensors are wired as further inputs (a recurrent layer's initial_state).
_WIRED_KWARGS = ("initial_state",)


def _check_kwargs(kwargs: Any, call: Call) -> None:
    if not isinstance(kwargs, dict):
        return
    for key, value in kwargs.items():
        found: list[Ref] = []
        _tensors(value, found, [])
        if found and key in _WIRED_KWARGS:
            call.refs.extend(found)
        elif found and key == "mask":
            call.mask_tensor = True  # keydnn propagates masks itself; _walk checks that one reaches this call
        elif found:
            call.problems.append(f"call argument {key!r} is a tensor ({found[0][0]}); keydnn only wires "
                                 "a layer's main inputs")
        elif key not in _HARMLESS_KWARGS or value not in _HARMLESS_KWARGS[key]:
            call.problems.append(f"call argument {key}={value!r} is not supported")


def parse_calls(layer: LayerSpec) -> list[Call]:
    """The recorded calls of ``layer`` (Keras 2 or Keras 3 form), in order."""
    calls: list[Call] = []
    for raw in layer.inbound_nodes or []:
        call = Call()
        if isinstance(raw, dict) and is_operation(layer):  # a Keras 3 operation: its converter reads the args
            for arg in raw.get("args", []) or []:
                _tensors(arg, call.refs, [])
            kwargs = raw.get("kwargs", {})
            for key in kwargs if isinstance(kwargs, dict) else []:
                _tensors(kwargs[key], call.refs, [])
        elif isinstance(raw, dict):  # Keras 3
            others: list[Any] = []
            for arg in raw.get("args", []) or []:
                _tensors(arg, call.refs, others)
            if any(o is not None for o in others):
                call.problems.append(f"non-tensor call arguments {[o for o in others if o is not None]!r} "
                                     "are not supported")
            if layer.class_name in TENSOR_KWARGS:
                _layer_kwargs(raw.get("kwargs", {}), call, TENSOR_KWARGS[layer.class_name], keras2=False)
            else:
                _check_kwargs(raw.get("kwargs", {}), call)
        elif isinstance(raw, list) and layer.class_name in TF_OP_LAYERS:  # Keras 2 TFOpLambda / SlicingOpLambda
            raw = tf_op_entries(raw)
            for entry in raw:
                if isinstance(entry, list) and entry and entry[0] == "_CONSTANT_VALUE":
                    pass  # a constant first argument; its converter reads it
                elif _as_ref(entry) is not None:
                    call.refs.append(_as_ref(entry))  # type: ignore[arg-type]
                else:
                    call.problems.append(f"unreadable call argument {entry!r}")
            kwargs = raw[0][3] if raw and isinstance(raw[0], list) and len(raw[0]) == 4 else {}
            for key in kwargs if isinstance(kwargs, dict) else []:
                ref = _as_ref(kwargs[key])
                if ref is not None and len(kwargs[key]) == 3:
                    call.refs.append(ref)
        elif isinstance(raw, list):  # Keras 2
            for entry in raw:
                ref = _as_ref(entry)
                if ref is None:
                    raise KerasInteropError(f"layer {layer.name!r}: malformed inbound node entry {entry!r}", [
                        Problem("malformed inbound node", layer.index, layer.name, layer.class_name,
                                field="inbound_nodes", value=entry)])
                call.refs.append(ref)
                if len(entry) == 4 and layer.class_name in TENSOR_KWARGS:
                    _layer_kwargs(entry[3], call, TENSOR_KWARGS[layer.class_name], keras2=True)
                elif len(entry) == 4:
                    _check_kwargs(entry[3], call)
        else:
            raise KerasInteropError(f"layer {layer.name!r}: malformed inbound node {raw!r}", [
                Problem("malformed inbound node", layer.index, layer.name, layer.class_name,
                        field="inbound_nodes", value=raw)])
        calls.append(call)
    return calls


def _flat_refs(structure: Any) -> list[Ref]:
    """``input_layers`` / ``output_layers``: a triple, a list of triples, or a dict of them (sorted keys)."""
    ref = _as_ref(structure)
    if ref is not None:
        return [ref]
    if isinstance(structure, dict):
        return [r for key in sorted(structure) for r in _flat_refs(structure[key])]
    if isinstance(structure, (list, tuple)):
        return [r for item in structure for r in _flat_refs(item)]
    return []


# --------------------------------------------------------------------------- #
# The walk
# --------------------------------------------------------------------------- #


@dataclass
class _Graph:
    """One Functional model's layers (by their name in that model) and wiring."""

    where: str
    layers: dict[str, LayerSpec]  # local name -> spec (the spec's name may carry a nesting prefix)
    calls: dict[str, list[Call]]
    offsets: dict[str, int]

    @classmethod
    def of(cls, where: str, layers: dict[str, LayerSpec], extra_refs: list[Ref]) -> "_Graph":
        calls = {name: parse_calls(spec) for name, spec in layers.items()}
        highest: dict[str, int] = {}
        for ref in extra_refs + [r for cs in calls.values() for c in cs for r in c.refs]:
            highest[ref[0]] = max(highest.get(ref[0], -1), ref[1])
        offsets = {name: max(0, highest.get(name, -1) + 1 - len(cs)) for name, cs in calls.items()}
        return cls(where, layers, calls, offsets)

    def key(self, ref: Ref, bound: dict[Ref, str]) -> tuple[str, int] | None:
        """(layer, call index) producing ``ref``; None for a bound (input) tensor."""
        if ref in bound:
            return None
        name, node, _ = ref
        if name not in self.layers:
            raise self._broken(f"refers to tensor {list(ref)} of {name!r}, which is not a layer of the model "
                               "(a Keras operation, e.g. `x + y` or a keras.ops call? keydnn converts layers: "
                               "use keras.layers.Add, Multiply, ...)")
        index = node - self.offsets[name]
        if not 0 <= index < len(self.calls[name]):
            raise self._broken(f"refers to call {node} of layer {name!r}, which has "
                               f"{len(self.calls[name])} recorded call(s)")
        return name, index

    def _broken(self, message: str) -> KerasInteropError:
        return KerasInteropError(f"cannot convert {self.where}: its layer graph {message}",
                                 [Problem(f"layer graph {message}")])

    def order(self, outputs: list[Ref], bound: dict[Ref, str]) -> Iterator[tuple[str, int]]:
        """Calls in depth-first post-order from the outputs (operands in order): a topological order."""
        done: set[tuple[str, int]] = set()
        active: set[tuple[str, int]] = set()
        for out in outputs:
            root = self.key(out, bound)
            if root is None or root in done:
                continue
            stack: list[tuple[tuple[str, int], bool]] = [(root, False)]
            while stack:
                k, expanded = stack.pop()
                if expanded:
                    active.discard(k)
                    done.add(k)
                    yield k
                    continue
                if k in done:
                    continue
                if k in active:
                    raise self._broken(f"has a cycle through layer {k[0]!r}")
                active.add(k)
                stack.append((k, True))
                for ref in reversed(self.calls[k[0]][k[1]].refs):
                    dep = self.key(ref, bound)
                    if dep is not None and dep not in done:
                        if dep in active:
                            raise self._broken(f"has a cycle through layer {dep[0]!r}")
                        stack.append((dep, False))


def _walk(low: Lowering, graph: _Graph, bound: dict[Ref, str], outputs: list[Ref], prefix: str) -> list[str]:
    """Convert every call that reaches ``outputs``; the output values, in order."""
    env: dict[Ref, str] = dict(bound)
    for name, index in graph.order(outputs, bound):
        layer = graph.layers[name]
        call = graph.calls[name][index]
        node_name = f"{prefix}{name}" + (f".{index}" if index else "")
        inputs = []
        for ref in call.refs:
            if ref not in env:
                placeholder = _placeholder_for(low, env, ref)
                if placeholder is None:
                    raise graph._broken(f"reads tensor {list(ref)}, which no layer produces")
                env[ref] = placeholder
            inputs.append(env[ref])
        problems = list(call.problems)
        if call.mask_tensor and inputs and inputs[0] not in low.masks:
            problems.append("is called with a mask tensor that does not come from Embedding(mask_zero=True) or "
                            "Masking upstream; keydnn only propagates those masks")
        if problems and not _unsupported_class(layer):
            low.placeholder(layer, inputs, node_name,
                            [Problem(p, layer.index, layer.name, layer.class_name) for p in problems])
            results = [low.nodes[-1].outputs[0].name]
        else:
            raw = layer.inbound_nodes[index] if layer.inbound_nodes and index < len(layer.inbound_nodes) else None
            kwargs = dict(call.kwargs)
            if call.tensor_kwargs:
                kwargs.update(zip(call.tensor_kwargs, inputs[len(inputs) - len(call.tensor_kwargs):]))
            results = low.call(layer, inputs, name=node_name, raw_call=raw, call_kwargs=kwargs)
        node = index + graph.offsets[name]
        for t, value in enumerate(results):
            env[(name, node, t)] = value
    for r in outputs:
        if r not in env and (placeholder := _placeholder_for(low, env, r)) is not None:
            env[r] = placeholder
    missing = [r for r in outputs if r not in env]
    if missing:
        raise graph._broken(f"has outputs {missing} that no layer produces")
    return [env[r] for r in outputs]


def _unsupported_class(layer: LayerSpec) -> bool:
    """Whether ``layer`` is refused for its class alone. Its call arguments are then beside the point:
    Keras 3 itself writes ``training: true`` for the preprocessing layers whose ``call`` defaults to it
    (RandomFlip, ...), and reporting that would hide that the layer is not supported at all."""
    from keydnn.frontends.keras.lower import IGNORED_AT_INFERENCE
    from keydnn.frontends.keras.registry import CONVERTERS

    return (layer.class_name not in CONVERTERS and layer.class_name not in IGNORED_AT_INFERENCE
            and layer.class_name not in NESTED_MODEL_CLASSES)


def _placeholder_for(low: Lowering, env: dict[Ref, str], ref: Ref) -> str | None:
    """The opaque node standing for an unconverted layer with several outputs (an LSTM with
    ``return_state``): it stands for every output, so the layer is reported as unsupported once, not
    as a broken graph."""
    first = env.get((ref[0], ref[1], 0))
    if first is None:
        return None
    for node in reversed(low.nodes):
        if node.outputs[0].name == first:
            return first if node.op.kind == "opaque" else None
    return None


# --------------------------------------------------------------------------- #
# Top level
# --------------------------------------------------------------------------- #


def _input_shapes(spec: ModelSpec) -> dict[str, tuple[int | None, ...]]:
    """Batch shape of every InputLayer: from its config, else from a Keras 3 tensor reading it."""
    shapes: dict[str, tuple[int | None, ...]] = {}
    for entry in spec.input_layer_configs:
        config = entry.get("config") or {}
        for key in ("batch_shape", "batch_input_shape"):
            shape = config.get(key)
            if isinstance(shape, list):
                shapes[entry["name"]] = tuple(shape)
                break
    for layer in spec.layers:
        for raw in layer.inbound_nodes or []:
            if not isinstance(raw, dict):
                continue
            stack = list(raw.get("args", []) or [])
            while stack:
                value = stack.pop()
                if isinstance(value, list):
                    stack.extend(value)
                    continue
                ref = _keras_tensor(value)
                shape = value["config"].get("shape") if ref is not None else None
                if ref is not None and ref[0] not in shapes and isinstance(shape, list):
                    shapes[ref[0]] = tuple(shape)
    return shapes


def lower_functional(spec: ModelSpec, options: ConversionOptions) -> FrontendResult:
    """The DAG driver: graph inputs are the Keras input layers (by name), outputs in Keras's order."""
    low = Lowering(spec, options)
    input_refs = _flat_refs(spec.input_layers)
    output_refs = _flat_refs(spec.output_layers)
    where = f"model {spec.name!r}"
    if not input_refs or not output_refs:
        raise KerasInteropError(f"cannot convert {where}: the Functional config names no inputs or outputs", [
            Problem("Functional model without input_layers/output_layers", field="input_layers",
                    value=spec.input_layers)])
    shapes = _input_shapes(spec)
    inputs = []
    bound: dict[Ref, str] = {}
    for position, ref in enumerate(input_refs):
        shape = shapes.get(ref[0], spec.input_shape if position == 0 else ())
        value = low.input_value(ref[0], shape, where=f"{ref[0]}.batch_shape")
        inputs.append(value)
        bound[ref] = value.name
    layers = {layer.name: layer for layer in spec.layers}
    graph = _Graph.of(where, layers, output_refs)
    outputs = _walk(low, graph, bound, output_refs, prefix="")
    return low.finish(inputs, outputs, functional=True, output_names=[ref[0] for ref in output_refs])


# --------------------------------------------------------------------------- #
# Nested models
# --------------------------------------------------------------------------- #


def inline_model(low: Lowering, layer: LayerSpec, inputs: list[str], name: str) -> list[str]:
    """Convert one call of a nested Sequential / Functional model in place; its output values."""
    children, problems = nested_layers(layer, low.spec)
    if problems:
        low.placeholder(layer, inputs, name, problems)
        return [low.nodes[-1].outputs[0].name]
    prefix = f"{name}/"
    config = layer.config
    if layer.class_name == "Sequential" or "input_layers" not in config:
        if len(inputs) != 1:
            low.placeholder(layer, inputs, name, [Problem(
                f"a nested Sequential model takes one input tensor, but is called on {len(inputs)}",
                layer.index, layer.name, layer.class_name)])
            return [low.nodes[-1].outputs[0].name]
        x = inputs[0]
        for local, child in children.items():
            (x,) = low.call(child, [x], name=f"{prefix}{local}")[:1]
        return [x]
    input_refs = _flat_refs(config.get("input_layers"))
    output_refs = _flat_refs(config.get("output_layers"))
    if len(input_refs) != len(inputs):
        low.placeholder(layer, inputs, name, [Problem(
            f"nested model has {len(input_refs)} input(s), but is called on {len(inputs)}",
            layer.index, layer.name, layer.class_name)])
        return [low.nodes[-1].outputs[0].name]
    bound = dict(zip(input_refs, inputs))
    graph = _Graph.of(f"nested model {layer.name!r}", children, output_refs)
    return _walk(low, graph, bound, output_refs, prefix=prefix)


def _is_model(class_name: str, config: Any) -> bool:
    return class_name in NESTED_MODEL_CLASSES and isinstance(config, dict) and isinstance(config.get("layers"), list)


def nested_layers(layer: LayerSpec, spec: ModelSpec | None = None) -> tuple[dict[str, LayerSpec], list[Problem]]:
    """The layers of a nested model (InputLayers left out) as LayerSpecs with their own weights.

    Their names are ``<model>/<layer>``; their weights are routed from the
    nested model's flat list by the paths the reader kept (``in_d1/kernel``;
    ``layers/dense/var0`` in ``.keras`` archives), or by a name only one of
    them can own (``gamma``).
    """
    from keydnn.frontends.keras.reader import normalize_layer_config

    entries = [e for e in layer.config.get("layers", []) if isinstance(e, dict)]
    children: dict[str, LayerSpec] = {}
    for entry in entries:
        cls = entry.get("class_name")
        config = entry.get("config")
        if cls == "InputLayer" or not isinstance(cls, str) or not isinstance(config, dict):
            continue
        local = config.get("name", entry.get("name"))
        if not isinstance(local, str):
            continue
        children[local] = LayerSpec(
            index=layer.index, class_name=cls, name=f"{layer.name}/{local}", config=normalize_layer_config(config),
            weights=(), module=entry.get("module") if isinstance(entry.get("module"), str) else None,
            registered_name=entry.get("registered_name") if isinstance(entry.get("registered_name"), str) else None,
            inbound_nodes=entry.get("inbound_nodes") if isinstance(entry.get("inbound_nodes"), list) else None,
        )
    keras2 = bool(spec is not None and (spec.keras_version or "").startswith("2."))
    routed, problems = _route_weights(layer, list(children.values()), keras2)
    for local, child in children.items():
        children[local] = replace(child, weights=tuple(routed.get(local, [])))
    return children, problems


def _expected_names(child: LayerSpec) -> list[str] | None:
    from keydnn.frontends.keras.reader import positional_layout

    layout = positional_layout(child.class_name, child.config)
    if layout is None:
        return None
    return [n if not rel else f"{rel}/{n}" for rel, names in layout.items() for n in names]


def _inner_names(class_name: Any, config: Any) -> set[str]:
    """Local names of the layers inside a nested model (all depths); empty for a plain layer."""
    out: set[str] = set()
    for entry in config.get("layers", []) if _is_model(class_name, config) else []:
        sub = entry.get("config") if isinstance(entry, dict) else None
        if isinstance(sub, dict) and isinstance(sub.get("name"), str) and entry.get("class_name") != "InputLayer":
            out.add(sub["name"])
            out |= _inner_names(entry.get("class_name"), sub)
    return out


def _zip_keys(children: list[LayerSpec], keras2: bool) -> dict[str, str]:
    """``.keras`` group key (``dense``, ``dense_1``...) -> child local name, as Keras numbers them by class."""
    from keydnn.frontends.keras.reader import snake_case

    used: dict[str, int] = {}
    keys: dict[str, str] = {}
    for child in children:
        base = snake_case(child.class_name, keras2)
        used[base] = used.get(base, -1) + 1
        keys[base if used[base] == 0 else f"{base}_{used[base]}"] = child.name.rsplit("/", 1)[-1]
    return keys


def _route_weights(layer: LayerSpec, children: list[LayerSpec], keras2: bool
                   ) -> tuple[dict[str, list[tuple[str, np.ndarray]]], list[Problem]]:
    from keydnn.frontends.keras.reader import canonical_weight_name

    local = {c.name.rsplit("/", 1)[-1]: c for c in children}
    expected = {name: _expected_names(c) for name, c in local.items()}
    deep: dict[str, list[str]] = {}
    for name, child in local.items():
        for inner in _inner_names(child.class_name, child.config):
            deep.setdefault(inner, []).append(name)
    zip_keys = _zip_keys(children, keras2)
    routed: dict[str, list[tuple[str, np.ndarray]]] = {}
    unrouted: list[str] = []

    def put(child: str, wname: str, array: np.ndarray) -> None:
        if expected[child] is not None:  # a plain layer: short names, Keras 3 spelling
            wname = canonical_weight_name(local[child].class_name, wname)
        routed.setdefault(child, []).append((wname, array))

    for wname, array in layer.weights:
        parts = wname.split("/")
        if len(parts) >= 3 and parts[0] == "layers" and parts[1] in zip_keys:  # .keras: layers/<key>/.../var<i>
            child = zip_keys[parts[1]]
            rest = "/".join(parts[2:])
            names = expected[child]
            if names is not None and rest.startswith("var") and rest[3:].isdigit() and int(rest[3:]) < len(names):
                rest = names[int(rest[3:])]
            put(child, rest, array)
            continue
        target = None
        for i, part in enumerate(parts[:-1]):
            if part in local:
                target = (part, "/".join(parts[i + 1:]))
                break
            if len(deep.get(part, [])) == 1:
                target = (deep[part][0], "/".join(parts[i:]))
                break
        if target is None and len(parts) == 1:
            owners = [n for n, names in expected.items() if names is not None and wname in names]
            if len(owners) == 1:
                target = (owners[0], wname)
        if target is None:
            unrouted.append(wname)
            continue
        put(*target, array)
    problems = []
    if unrouted:
        problems.append(Problem(f"cannot tell which layer of the nested model owns weight(s) {unrouted}",
                                layer.index, layer.name, layer.class_name, field="weights",
                                value=[w for w, _ in layer.weights]))
    return routed, problems
