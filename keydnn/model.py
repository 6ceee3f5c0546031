"""``keydnn.Model``: a compiled model you call like the Keras model it came from.

A Functional Keras model converts to a ``Model``: any number of inputs
(named after the Keras input layers) and outputs. ``keydnn.Sequential`` is
the one-input, one-output special case and shares all of this code.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from keydnn.device import Device, DeviceLike, parse_device
from keydnn.errors import BackendError
from keydnn.ir.graph import Graph
from keydnn.modules import Module, module_for

__all__ = ["Model"]

logger = logging.getLogger(__name__)


class Model:
    """A converted model: callable on arrays in the Keras model's own layout.

    Call it with one array per input, positionally (``model(x1, x2)``), as a
    list (``model([x1, x2])``), as a dict keyed by input name
    (``model({"image": x1, "meta": x2})``) or as keywords
    (``model(image=x1, meta=x2)``). It returns one array for a one-output
    model and a list of arrays (in the Keras model's output order) otherwise.
    The graph is compiled for its device lazily, on the first call, so that
    inspecting or re-saving a model never pays for compilation.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        device: DeviceLike = "cpu",
        pipeline: Sequence[str] = (),
        layers: Sequence[dict] = (),
        source: dict | None = None,
        verification: dict | None = None,
    ) -> None:
        self.graph = graph
        self.device: Device = parse_device(device)
        self.pipeline = list(pipeline)
        self.keras_layers = [dict(layer) for layer in layers]
        self.source = dict(source or {})
        self.verification = verification
        self._executable: Any = None
        self._lock = threading.Lock()
        self._fast = self._fast_signature()
        if self.device.kind != "cpu":
            self._compile()  # surface device errors (no GPU, bad index) at load time

    # -- inspection -------------------------------------------------------------
    @property
    def layers(self) -> list[Module]:
        """The KeyDNN modules in execution order."""
        return [module_for(node, self.graph) for node in self.graph.nodes]

    @property
    def input_names(self) -> list[str]:
        """Input names, in call order (the Keras input layer names for Functional models)."""
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return list(self.graph.outputs)

    @property
    def input_types(self):
        return tuple(v.type for v in self.graph.inputs)

    @property
    def output_types(self):
        return self.graph.output_types()

    @property
    def dtype(self) -> np.dtype:
        return self.graph.inputs[0].type.np_dtype  # type: ignore[union-attr]

    def summary(self) -> str:
        rows = [f"keydnn.{type(self).__name__} on {self.device} ({len(self.graph.nodes)} nodes)"]
        rows += [f"  {m!r}" for m in self.layers]
        return "\n".join(rows)

    def __repr__(self) -> str:
        def side(names: Sequence[str], types: Sequence[Any]) -> str:
            if len(names) == 1:
                return str(types[0])
            return ", ".join(f"{n}: {t}" for n, t in zip(names, types))

        ins = side(self.input_names, self.input_types)
        outs = side(self.output_names, self.output_types)
        return f"<keydnn.{type(self).__name__} {self.graph.name!r} ({ins}) -> ({outs}) on {self.device}>"

    # -- running ----------------------------------------------------------------
    def _compile(self) -> Any:
        if self._executable is None:
            with self._lock:
                if self._executable is None:
                    opaque = self.graph.find_opaque()
                    if opaque:
                        names = ", ".join(f"{n.name} ({n.op.keras_class})" for n in opaque)
                        raise BackendError(f"this model contains unsupported layers kept as placeholders and "
                                           f"cannot run: {names}")
                    from keydnn.backends import compile_for

                    self._executable = compile_for(self.graph, self.device)
        return self._executable

    def _label(self, index: int) -> str:
        return f"input {index}" if len(self.graph.inputs) == 1 else f"input {index} ({self.graph.inputs[index].name!r})"

    def _check_input(self, x: Any, index: int) -> Any:
        expected = self.graph.inputs[index].type
        assert expected is not None
        label = self._label(index)
        if self.device.kind == "cuda" and _on_device(x):
            return x
        if not isinstance(x, np.ndarray):
            if isinstance(x, (list, tuple)) or np.isscalar(x):
                x = np.asarray(x)
            else:
                raise ValueError(f"{label} must be a NumPy array of shape {_shape_text(expected.shape)}, "
                                 f"got {type(x).__name__}")
        if expected.np_dtype.kind == "i":  # token ids
            if x.dtype.kind not in "iu":
                raise ValueError(f"{label} has dtype {x.dtype}; expected an integer array of token ids "
                                 f"({expected.dtype}), shape {_shape_text(expected.shape)}")
            info = np.iinfo(expected.np_dtype)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise ValueError(f"{label} has values outside the {expected.dtype} range")
        elif x.dtype.kind in "iu" and self._takes_ids(index):
            pass  # token ids into an Embedding of a float-typed Keras input: exact as floats below 2**24
        elif x.dtype.kind != "f":
            raise ValueError(f"{label} has dtype {x.dtype}; expected a floating array "
                             f"({expected.dtype}), shape {_shape_text(expected.shape)}")
        if not expected.matches(x.shape):
            raise ValueError(f"{label} has shape {tuple(x.shape)}; expected {_shape_text(expected.shape)} "
                             f"({expected.layout if expected.layout != 'ANY' else 'Keras layout'}, batch first)")
        if x.shape[0] == 0:
            raise ValueError(f"{label}: batch is empty")
        return np.ascontiguousarray(x, dtype=expected.np_dtype)

    def _takes_ids(self, index: int) -> bool:
        """Whether input ``index`` only feeds embeddings (then integer arrays are token ids, not a mistake)."""
        name = self.graph.inputs[index].name
        users = [n for n in self.graph.nodes if name in n.inputs]
        return bool(users) and all(n.op.kind in ("embedding", "sequence_mask") for n in users)

    def _gather(self, args: tuple, named: Mapping[str, Any]) -> list[Any]:
        """One value per graph input, from positional, list, dict or keyword arguments."""
        names = self.input_names
        if named:
            if args:
                raise ValueError("pass the inputs either positionally or by name, not both")
            args = (dict(named),)
        if len(args) == 1 and isinstance(args[0], Mapping):
            given = args[0]
            unknown = sorted(set(given) - set(names))
            missing = [n for n in names if n not in given]
            if unknown or missing:
                raise ValueError(f"model inputs are {names}; missing {missing}, unknown {unknown}")
            return [given[n] for n in names]
        if len(args) == 1 and isinstance(args[0], (list, tuple)) and _is_array_list(args[0], len(names)):
            args = tuple(args[0])
        if len(args) != len(names):
            raise ValueError(f"model takes {len(names)} input(s) {names}, got {len(args)}")
        return list(args)

    def arrange_inputs(self, inputs: Any) -> list[Any]:
        """Inputs given as one array, a list in input order, or a dict by input name -> a list in input order."""
        return self._gather(tuple(inputs) if isinstance(inputs, list) else (inputs,), {})

    def _fast_signature(self) -> Any:
        """(dtype, per-sample shape) of the one input of a CPU model with static sample dims, else None:
        calls with exactly such an array skip the general argument handling (microseconds at batch 1)."""
        if self.device.kind != "cpu" or len(self.graph.inputs) != 1 or self.graph.inputs[0].type is None:
            return None
        t = self.graph.inputs[0].type
        sample = tuple(t.shape[1:])
        if not all(isinstance(d, int) for d in sample) or t.shape[0] != "N":
            return None
        return t.np_dtype, sample

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        fast = self._fast
        if fast is not None and len(inputs) == 1 and not named:
            x = inputs[0]
            if (type(x) is np.ndarray and x.dtype == fast[0] and x.shape[1:] == fast[1] and x.shape[0] > 0
                    and x.flags.c_contiguous):
                outputs = (self._executable or self._compile())(x)
                return outputs[0] if len(outputs) == 1 else list(outputs)
        values = self._gather(inputs, named)
        arrays = [self._check_input(x, i) for i, x in enumerate(values)]
        if len(arrays) > 1:
            batches = {a.shape[0] for a in arrays if hasattr(a, "shape")}
            if len(batches) > 1:
                raise ValueError(f"inputs have different batch sizes {sorted(batches)}")
        outputs = self._compile()(*arrays)
        return outputs[0] if len(outputs) == 1 else list(outputs)

    predict = __call__

    # -- saving -----------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, sidecar: bool = False) -> str:
        """Write the KeyDNN artifact (atomically); returns the path written."""
        from keydnn.backends.artifact import save_artifact

        layers = []
        for layer in self.keras_layers:
            nodes = [n.name for n in self.graph.nodes if n.source == layer["keras_name"]]
            layers.append({**layer, "nodes": nodes})
        return str(save_artifact(path, self.graph, pipeline=self.pipeline, layers=layers, source=self.source or None,
                                 verification=self.verification, sidecar=sidecar))


def _is_array_list(value: Sequence[Any], n_inputs: int) -> bool:
    """Whether a list argument holds one array per input (rather than being one input's data as nested lists)."""
    if n_inputs > 1:
        return True
    return len(value) == 1 and (isinstance(value[0], np.ndarray) or _on_device(value[0]))


def _on_device(x: Any) -> bool:
    """A GPU array (CuPy, PyTorch, numba; the simulator's arrays say so with ``__cuda_ndarray__``)."""
    return hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "__cuda_ndarray__", False))


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("batch" if isinstance(d, str) and d == "N" else str(d) for d in shape) + ")"
