"""Lower a Keras ``ModelSpec`` into an IR graph through the converter table.

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

import numpy as np
from pydantic import ValidationError

from keydnn.errors import KerasInteropError, Problem
from keydnn.frontends.keras.registry import CONVERTERS, ConversionOptions, LayerContext, Unconvertible
from keydnn.frontends.keras.spec import ModelSpec
from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import Opaque
from keydnn.ir.types import TensorType, Value

__all__ = ["FrontendResult", "lower_model", "IGNORED_AT_INFERENCE"]

logger = logging.getLogger(__name__)

#: Layers that are the identity at inference time; they produce no node.
IGNORED_AT_INFERENCE: frozenset[str] = frozenset()

_SEQUENTIAL = ("Sequential",)
_LAYOUT_BY_RANK = {2: "NC"}


@dataclass
class FrontendResult:
    """The lowered graph plus what the artifact records about the source."""

    graph: Graph
    layers: list[dict] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def _input_value(spec: ModelSpec, dtype: str, problems: list[Problem]) -> Value:
    shape = list(spec.input_shape)
    if not shape:
        problems.append(Problem("the model has no input shape; build it with an Input layer or input_shape"))
        shape = [None]
    dims: list[int | str] = ["N"]
    for i, d in enumerate(shape[1:], start=1):
        if d is None:
            problems.append(Problem(f"input dimension {i} is dynamic (None)", field="input_shape", value=list(shape),
                                    supported="static non-batch dimensions"))
            dims.append(f"D{i}")
        else:
            dims.append(int(d))
    layout = _LAYOUT_BY_RANK.get(len(dims), "ANY")
    return Value(name="input", type=TensorType(shape=tuple(dims), dtype=dtype, layout=layout))


def lower_model(spec: ModelSpec, options: ConversionOptions) -> FrontendResult:
    """Convert every layer of ``spec``; raise KerasInteropError (strict) or keep placeholders."""
    problems: list[Problem] = []
    if spec.model_class not in _SEQUENTIAL:
        msg = (f"model {spec.name!r} is a {spec.model_class} model; keydnn converts tf.keras.Sequential models "
               "(Functional and subclassed models are not supported yet)")
        if options.strict or not spec.layers:
            raise KerasInteropError(msg, [Problem(msg, field="model_class", value=spec.model_class,
                                                  supported="tf.keras.Sequential")])
        warnings.warn(msg + "; converting its layers as a stack", stacklevel=3)
    inp = _input_value(spec, options.dtype, problems)
    nodes: list[Node] = []
    weights: dict[str, np.ndarray] = {}
    layers: list[dict] = []
    x, x_type = inp.name, inp.type
    for layer in spec.layers:
        before = len(problems)
        first_node = len(nodes)
        ctx = LayerContext(layer=layer, x=x, x_type=x_type, options=options, problems=problems,
                           nodes=nodes, weights=weights)
        entry = CONVERTERS.get(layer.class_name)
        failed = False
        if entry is None:
            if layer.class_name in IGNORED_AT_INFERENCE:
                continue
            ctx.refuse(f"unsupported layer class {layer.class_name!r}",
                       supported=", ".join(sorted(CONVERTERS)))
            failed = True
        else:
            try:
                entry.fn(ctx)
            except Unconvertible:
                failed = True
            except ValidationError as exc:
                detail = "; ".join(e["msg"] for e in exc.errors())
                ctx.refuse(f"invalid configuration: {detail}")
                failed = True
            for key in ctx.unconsumed():
                ctx.refuse(f"config field {key!r} is not understood by keydnn", field=key,
                           value=layer.config.get(key), supported="the fields documented for this layer")
        failed = failed or len(problems) > before
        if failed:
            del nodes[first_node:]
            for name in [k for k in weights if k.startswith(layer.name + ".")]:
                del weights[name]
            if x_type is None and len(problems) == before:
                # Only a consequence of an earlier unconvertible layer: say so once.
                problems.append(Problem("cannot convert: the input shape is unknown after an unsupported layer",
                                        layer.index, layer.name, layer.class_name))
            reason = "; ".join(p.message for p in problems[before:]) or "unsupported"
            op = Opaque(keras_class=layer.class_name, reason=reason)
            nodes.append(Node(name=layer.name, op=op, inputs=(x,), outputs=(Value(name=layer.name),),
                              source=layer.name))
            x, x_type = layer.name, None
        else:
            x, x_type = ctx.x, ctx.x_type
        layers.append({"keras_name": layer.name, "keras_class": layer.class_name,
                       "nodes": [n.name for n in nodes[first_node:]]})
    if problems and options.strict:
        n = len({(p.layer_index, p.layer_name) for p in problems})
        raise KerasInteropError(f"cannot convert model {spec.name!r}: {len(problems)} problem(s) in {n} place(s)",
                                problems)
    if problems:
        warnings.warn(f"model {spec.name!r} converted with {len(problems)} problem(s); unsupported layers are "
                      "opaque placeholders and the model cannot run:\n" + "\n".join(f"  - {p}" for p in problems),
                      stacklevel=3)
    source = {"format": spec.source_format, "keras_version": spec.keras_version, "model_name": spec.name,
              "model_class": spec.model_class}
    inp = _with_input_layout(inp, nodes)
    graph = Graph.build(name=_graph_name(spec.name), inputs=(inp,), outputs=(x,), nodes=tuple(nodes),
                        weights=weights, metadata={"source_format": spec.source_format})
    return FrontendResult(graph=graph, layers=layers, source=source, problems=problems)


def _with_input_layout(inp: Value, nodes: list[Node]) -> Value:
    """Name the input's layout after the first layout-sensitive op (the data_format the user trained with)."""
    assert inp.type is not None
    if inp.type.layout != "ANY":
        return inp
    for node in nodes:
        layout = getattr(node.op, "layout", None)
        if layout in ("NCHW", "NHWC") and inp.type.rank == 4 or layout in ("NCW", "NWC") and inp.type.rank == 3:
            return Value(name=inp.name, type=inp.type.with_shape(inp.type.shape, layout=layout))
    return inp


def _graph_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name or "model")
    return cleaned or "model"


def describe_config(config: dict) -> str:
    """Stable one-line text of a config (for messages)."""
    return json.dumps(config, sort_keys=True, default=str)
