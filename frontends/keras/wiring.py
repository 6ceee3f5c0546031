"""How a Functional model's config records its wiring: the calls made to each layer and the tensors they read.

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

This module only reads that record (``parse_calls``); ``functional`` walks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keydnn.errors import KerasInteropError, Problem
from keydnn.frontends.keras.operations import is_operation
from keydnn.frontends.keras.spec import LayerSpec

__all__ = ["Ref", "Call", "TF_OP_LAYERS", "TENSOR_KWARGS", "tf_op_entries", "parse_calls", "keras_tensor_ref",
           "flat_refs"]

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
    as_ref = _as_ref if keras2 else keras_tensor_ref
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


def keras_tensor_ref(value: Any) -> Ref | None:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        config = value.get("config")
        if isinstance(config, dict):
            return _as_ref(config.get("keras_history"))
    return None


def _tensors(value: Any, out: list[Ref], others: list[Any]) -> None:
    """Keras tensors of a Keras 3 call argument, in order; anything else goes to ``others``."""
    ref = keras_tensor_ref(value)
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


def flat_refs(structure: Any) -> list[Ref]:
    """``input_layers`` / ``output_layers``: a triple, a list of triples, or a dict of them (sorted keys)."""
    ref = _as_ref(structure)
    if ref is not None:
        return [ref]
    if isinstance(structure, dict):
        return [r for key in sorted(structure) for r in flat_refs(structure[key])]
    if isinstance(structure, (list, tuple)):
        return [r for item in structure for r in flat_refs(item)]
    return []
