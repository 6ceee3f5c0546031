"""``keydnn.Sequential``: a compiled model you call like the Keras model it came from."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Sequence

import numpy as np

from keydnn.device import Device, DeviceLike, parse_device
from keydnn.errors import BackendError
from keydnn.ir.graph import Graph
from keydnn.modules import Module, module_for

__all__ = ["Sequential"]

logger = logging.getLogger(__name__)


class Sequential:
    """A converted model: callable on arrays in the Keras model's own layout.

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
        if self.device.kind != "cpu":
            self._compile()  # surface device errors (no GPU, bad index) at load time

    # -- inspection -------------------------------------------------------------
    @property
    def layers(self) -> list[Module]:
        """The KeyDNN modules in execution order."""
        return [module_for(node, self.graph) for node in self.graph.nodes]

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
        rows = [f"keydnn.Sequential on {self.device} ({len(self.graph.nodes)} nodes)"]
        rows += [f"  {m!r}" for m in self.layers]
        return "\n".join(rows)

    def __repr__(self) -> str:
        ins = ", ".join(str(t) for t in self.input_types)
        outs = ", ".join(str(t) for t in self.output_types)
        return f"<keydnn.Sequential {self.graph.name!r} ({ins}) -> ({outs}) on {self.device}>"

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

    def _check_input(self, x: Any, index: int) -> Any:
        expected = self.graph.inputs[index].type
        assert expected is not None
        if hasattr(x, "__cuda_array_interface__") and self.device.kind == "cuda":
            return x
        if not isinstance(x, np.ndarray):
            if isinstance(x, (list, tuple)) or np.isscalar(x):
                x = np.asarray(x)
            else:
                raise ValueError(f"input {index} must be a NumPy array of shape {_shape_text(expected.shape)}, "
                                 f"got {type(x).__name__}")
        if x.dtype.kind != "f":
            raise ValueError(f"input {index} has dtype {x.dtype}; expected a floating array "
                             f"({expected.dtype}), shape {_shape_text(expected.shape)}")
        if not expected.matches(x.shape):
            raise ValueError(f"input {index} has shape {tuple(x.shape)}; expected {_shape_text(expected.shape)} "
                             f"({expected.layout if expected.layout != 'ANY' else 'Keras layout'}, batch first)")
        if x.shape[0] == 0:
            raise ValueError("input batch is empty")
        return np.ascontiguousarray(x, dtype=expected.np_dtype)

    def __call__(self, *inputs: Any) -> Any:
        if len(inputs) != len(self.graph.inputs):
            raise ValueError(f"model takes {len(self.graph.inputs)} input(s), got {len(inputs)}")
        arrays = [self._check_input(x, i) for i, x in enumerate(inputs)]
        outputs = self._compile()(*arrays)
        return outputs[0] if len(outputs) == 1 else outputs

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


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("batch" if isinstance(d, str) and d == "N" else str(d) for d in shape) + ")"
