"""Lower Functional Keras models (layer graphs) and inline nested models.

The wiring (which calls read which tensors) is parsed by ``wiring``; the
layers of a nested model are found by ``nested``.

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
from dataclasses import dataclass
from typing import Iterator

from keydnn.errors import KerasInteropError, Problem
from keydnn.frontends.keras.lower import NESTED_MODEL_CLASSES, FrontendResult, Lowering
from keydnn.frontends.keras.nested import nested_layers
from keydnn.frontends.keras.registry import ConversionOptions
from keydnn.frontends.keras.spec import LayerSpec, ModelSpec
from keydnn.frontends.keras.wiring import (TENSOR_KWARGS, TF_OP_LAYERS, Call, Ref, flat_refs, keras_tensor_ref,
                                           parse_calls, tf_op_entries)

__all__ = ["lower_functional", "inline_model", "parse_calls", "Ref", "Call", "nested_layers", "TENSOR_KWARGS",
           "TF_OP_LAYERS", "tf_op_entries"]

logger = logging.getLogger(__name__)


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
                ref = keras_tensor_ref(value)
                shape = value["config"].get("shape") if ref is not None else None
                if ref is not None and ref[0] not in shapes and isinstance(shape, list):
                    shapes[ref[0]] = tuple(shape)
    return shapes


def lower_functional(spec: ModelSpec, options: ConversionOptions) -> FrontendResult:
    """The DAG driver: graph inputs are the Keras input layers (by name), outputs in Keras's order."""
    low = Lowering(spec, options)
    input_refs = flat_refs(spec.input_layers)
    output_refs = flat_refs(spec.output_layers)
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
    input_refs = flat_refs(config.get("input_layers"))
    output_refs = flat_refs(config.get("output_layers"))
    if len(input_refs) != len(inputs):
        low.placeholder(layer, inputs, name, [Problem(
            f"nested model has {len(input_refs)} input(s), but is called on {len(inputs)}",
            layer.index, layer.name, layer.class_name)])
        return [low.nodes[-1].outputs[0].name]
    bound = dict(zip(input_refs, inputs))
    graph = _Graph.of(f"nested model {layer.name!r}", children, output_refs)
    return _walk(low, graph, bound, output_refs, prefix=prefix)
