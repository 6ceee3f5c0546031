"""Verification: compare a converted model with Keras, find the first diverging layer, replay later.

``verify_against_keras`` needs TensorFlow (it runs the Keras model); the
recorded vectors it produces are stored in the artifact, and ``replay`` checks
them on any device without TensorFlow.

On a mismatch, every call of every Keras layer (each call of a shared layer,
the layers inside nested models) is compared with the value keydnn's
*unoptimized* graph computes for it, in Keras's layout, in the graph's
topological order. A call is found in the graph by the names the frontend gives
its nodes: ``<layer>`` / ``<layer>.<call>`` (``fc``, ``fc.1``), prefixed with
``<model call>/`` inside a nested model, with the Keras layer (``source``)
checked as well; the call's last node holds its result.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keydnn.ir.reference import REFERENCE_KERNELS
from keydnn.keras_runner import keras_call, keras_outputs

__all__ = ["TF_HINT", "VerifyReport", "LayerDiff", "load_keras_model", "sample_inputs", "verify_against_keras", "replay",
           "compare"]

logger = logging.getLogger(__name__)

TF_HINT = ("this operation runs the Keras model and needs TensorFlow; install it with "
            "`pip install 'keydnn[keras]'` (or `pip install tensorflow-cpu`, plus `tf_keras` for Keras 2 files)")


@dataclass(frozen=True)
class LayerDiff:
    """How far one call of a Keras layer is from keydnn's value for it.

    ``index`` is the layer's position in the top-level model's ``layers`` (a
    nested model's position for the layers inside it); ``name`` the Keras layer
    (``block/conv`` inside nested model ``block``); ``call`` / ``calls`` which
    call of a shared layer this is; ``node`` the keydnn node naming the call.
    """

    index: int
    name: str
    keras_class: str
    max_abs: float
    ok: bool
    call: int = 0
    calls: int = 1
    node: str = ""

    def describe(self) -> str:
        text = f"{self.index} {self.name!r} ({self.keras_class})"
        if self.calls > 1:
            text += f", call {self.call + 1} of {self.calls}"
        if self.node and self.node != self.name:
            text += f" (keydnn node {self.node!r})"
        return text


@dataclass
class VerifyReport:
    ok: bool
    max_abs: float
    max_rel: float
    rtol: float
    atol: float
    samples: int
    layers: list[LayerDiff] = field(default_factory=list)

    @property
    def first_divergence(self) -> LayerDiff | None:
        return next((d for d in self.layers if not d.ok), None)

    def text(self) -> str:
        verdict = "OK" if self.ok else "MISMATCH"
        lines = [f"{verdict}: max |keydnn - keras| = {self.max_abs:.3g} (max rel {self.max_rel:.3g}) over "
                 f"{self.samples} sample(s); tolerance rtol={self.rtol:g}, atol={self.atol:g}"]
        bad = self.first_divergence
        if bad is not None:
            lines.append(f"first diverging layer: {bad.describe()}, max abs difference {bad.max_abs:.3g}")
        elif self.layers and not self.ok:
            lines.append("no layer diverges in keydnn's unoptimized graph: the difference arises in an "
                         "optimization pass or in the backend")
        if self.layers and not self.ok:
            lines.append("per-layer max abs difference:")
            lines += [f"  {d.index:3d} {d.node or d.name:<28} {d.keras_class:<24} {d.max_abs:.3g}"
                      f"{'' if d.ok else '  <--'}" for d in self.layers]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        bad = self.first_divergence
        return {"ok": self.ok, "max_abs": self.max_abs, "max_rel": self.max_rel, "rtol": self.rtol, "atol": self.atol,
                "samples": self.samples, "first_divergence": None if bad is None else bad.__dict__,
                "layers": [d.__dict__ for d in self.layers]}


def compare(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> tuple[bool, float, float]:
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if got.shape != expected.shape:
        return False, float("inf"), float("inf")
    diff = np.abs(got - expected)
    finite = np.isfinite(expected)
    same_nonfinite = bool(np.array_equal(got[~finite], expected[~finite]))
    ok = same_nonfinite and bool(np.all(diff[finite] <= atol + rtol * np.abs(expected[finite])))
    max_abs = float(diff[finite].max(initial=0.0))
    max_rel = float((diff[finite] / np.maximum(np.abs(expected[finite]), 1e-30)).max(initial=0.0))
    return ok, max_abs, max_rel


def load_keras_model(source: Any, keras_major: int = 3) -> Any:
    """The live Keras model behind ``source`` (a path or a model object), loaded safely."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    try:
        if keras_major == 2:
            import tf_keras as keras
        else:
            import tensorflow as tf

            keras = tf.keras
    except ImportError as exc:
        raise ImportError(TF_HINT) from exc
    # safe_mode refuses to deserialize Python code (Lambda bytecode); the legacy .h5 path ignores the
    # argument, so the scope is entered explicitly as well.
    if keras_major == 2:
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    else:
        from keras.src.saving.serialization_lib import SafeModeScope
    with SafeModeScope(True):
        return keras.models.load_model(os.fspath(source), compile=False, safe_mode=True)


def _safe_mode(keras_model: Any) -> Any:
    """The safe-mode scope of ``keras_model``'s Keras (2 or 3): nothing deserializes Python code inside it."""
    if type(keras_model).__module__.startswith("tf_keras"):
        from tf_keras.src.saving.serialization_lib import SafeModeScope
    else:
        from keras.src.saving.serialization_lib import SafeModeScope
    return SafeModeScope(True)


def sample_inputs(input_types: Any, n: int = 8, seed: int = 0, graph: Any = None) -> list[np.ndarray]:
    """Reproducible inputs, one array per model input, batch ``n`` (and ``n`` steps on a symbolic time axis).

    Inputs that feed an embedding (token ids, of an integer or a float type) get ids drawn from
    ``[0, rows)`` of the smallest table they index (``graph`` names the tables; without it, ids 0 and 1);
    every other input is standard normal.
    """
    rng = np.random.default_rng(seed)
    arrays = []
    for index, t in enumerate(input_types):
        shape = tuple(n if isinstance(d, str) else d for d in t.shape)
        rows = _vocabulary(graph, index) if graph is not None else None
        if rows is None and np.dtype(t.dtype).kind in "iu":
            rows = 2
        if rows is not None:
            arrays.append(rng.integers(0, rows, size=shape).astype(t.dtype))
        else:
            arrays.append(rng.standard_normal(shape).astype(t.dtype))
    return arrays


def _vocabulary(graph: Any, index: int) -> int | None:
    """Rows of the smallest embedding table input ``index`` of ``graph`` indexes directly, or None."""
    name = graph.inputs[index].name
    rows = [int(np.shape(graph.weights[node.inputs[1]])[0]) for node in graph.nodes
            if node.op.kind == "embedding" and node.inputs[0] == name and node.inputs[1] in graph.weights]
    return min(rows) if rows else None


def _as_list(value: Any) -> list[np.ndarray]:
    if isinstance(value, (list, tuple)):
        return [_host(v) for v in value]
    if isinstance(value, dict):
        return [_host(v) for v in value.values()]
    return [_host(value)]


def _host(value: Any) -> np.ndarray:
    return value.copy_to_host() if hasattr(value, "copy_to_host") else np.asarray(value)


def _compare_all(got: list[np.ndarray], expected: list[np.ndarray], rtol: float, atol: float) -> tuple[bool, float, float]:
    if len(got) != len(expected):
        return False, float("inf"), float("inf")
    results = [compare(g, e, rtol, atol) for g, e in zip(got, expected)]
    return all(r[0] for r in results), max(r[1] for r in results), max(r[2] for r in results)


# --------------------------------------------------------------------------- #
# Per-layer localisation
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class _KerasCall:
    """One call of one Keras layer and what Keras computed for it."""

    index: int
    name: str  # the Keras layer, nested-model path included: the ``source`` of its keydnn nodes
    node: str  # the keydnn name of the call (``fc.1``, ``block.1/conv``)
    keras_class: str
    call: int
    calls: int
    value: np.ndarray


def _is_model(layer: Any) -> bool:
    return hasattr(layer, "layers") and hasattr(layer, "inputs") and type(layer).__name__ in (
        "Sequential", "Functional", "Model")


def _flat(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat(item)]
    if isinstance(value, dict):
        return [v for key in sorted(value) for v in _flat(value[key])]
    return [value]


def _keras_calls(model: Any, xs: list[Any], index: int | None = None, path: str = "", prefix: str = ""
                 ) -> tuple[list[_KerasCall], list[np.ndarray]]:
    """What Keras computes for every call of every layer of ``model`` on ``xs`` (nested models entered),
    and the model's outputs.

    A stack is run layer after layer; a graph through a probe model on its own
    tensors, ``Model(model.inputs, [every call's outputs])``, whose values feed
    the nested models' calls in turn. ``path`` / ``prefix`` name the enclosing
    models by layer and by call.
    """
    found: list[_KerasCall] = []
    if type(model).__name__ == "Sequential":
        h = xs[0]
        for position, layer in enumerate(model.layers):
            where = position if index is None else index
            if _is_model(layer):
                inner, outputs = _keras_calls(layer, [h], where, f"{path}{layer.name}/", f"{prefix}{layer.name}/")
                found += inner
                h = outputs[0]
            else:
                h = keras_call(layer, h)
                found.append(_KerasCall(where, path + layer.name, prefix + layer.name, type(layer).__name__, 0, 1,
                                        np.asarray(h)))
        return found, [np.asarray(h)]
    by_depth = model._nodes_by_depth  # both Keras 3 (Function) and tf_keras (Functional) keep it
    nodes = [n for depth in sorted(by_depth, reverse=True) for n in by_depth[depth] if not n.is_input]
    own = {id(n) for n in nodes}
    tensors = list({id(t): t for n in nodes for t in _flat(n.outputs)}.values())
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras as keras
    else:
        import keras
    probe = keras.Model(model.inputs, tensors)
    values = keras_outputs(probe, list(xs))
    env = {id(t): v for t, v in zip(model.inputs, xs)}
    env.update({id(t): v for t, v in zip(tensors, values)})
    positions = {id(layer): i for i, layer in enumerate(model.layers)}
    for n in nodes:
        layer = getattr(n, "operation", None) or n.layer
        calls = [m for m in layer._inbound_nodes if id(m) in own]
        call = next(i for i, m in enumerate(calls) if m is n)
        node = f"{prefix}{layer.name}" + (f".{call}" if call else "")
        where = positions.get(id(layer), -1) if index is None else index
        if _is_model(layer):
            inputs = n.input_tensors if hasattr(n, "operation") else n.keras_inputs
            found += _keras_calls(layer, [env[id(t)] for t in _flat(inputs)], where, f"{path}{layer.name}/",
                                  f"{node}/")[0]
        else:
            found.append(_KerasCall(where, path + layer.name, node, type(layer).__name__, call, len(calls),
                                    env[id(_flat(n.outputs)[0])]))
    return found, [np.asarray(env[id(t)]) for t in _flat(model.outputs)]


def _owner(node: Any, calls: dict[str, _KerasCall]) -> _KerasCall | None:
    """The Keras call a frontend node belongs to: its name less ``.suffix`` / ``_k`` parts, same source."""
    name = node.name
    while True:
        found = calls.get(name)
        if found is not None and found.name == node.source:
            return found
        head, sep, tail = name.rpartition("/")
        shorter = re.sub(r"_\d+$", "", tail)
        if shorter == tail:
            if "." not in tail:
                return None
            shorter = tail.rsplit(".", 1)[0]
        name = head + sep + shorter


def _layer_diffs(graph: Any, keras_model: Any, xs: list[np.ndarray], rtol: float, atol: float) -> list[LayerDiff]:
    """Every Keras layer call found in ``graph`` (unoptimized, Keras layout), compared, in graph order."""
    calls = {c.node: c for c in _keras_calls(keras_model, list(xs))[0]}
    env: dict[str, np.ndarray] = dict(graph.weights)
    env.update({v.name: x.astype(np.float64) for v, x in zip(graph.inputs, xs)})
    results: dict[str, str] = {}  # call -> the value of its last node (dicts keep the graph's order)
    for node in graph.nodes:
        env[node.outputs[0].name] = np.asarray(
            REFERENCE_KERNELS[node.op.kind](node.op, [env[i] for i in node.inputs]))
        owner = _owner(node, calls)
        if owner is not None:
            results.pop(owner.node, None)
            results[owner.node] = node.outputs[0].name
    diffs = []
    for key, value in results.items():
        c = calls[key]
        ok, max_abs, _ = compare(env[value], c.value, rtol, atol)
        diffs.append(LayerDiff(c.index, c.name, c.keras_class, max_abs, ok, c.call, c.calls, c.node))
    return diffs


def verify_against_keras(model: Any, keras_model: Any, xs: list[np.ndarray], *, frontend_graph: Any = None,
                         rtol: float = 1e-4, atol: float = 1e-5) -> tuple[VerifyReport, list[np.ndarray]]:
    """Run both models on ``xs`` (one array per input); on a mismatch, locate the first diverging Keras layer.

    ``frontend_graph`` is the unoptimized graph of the same conversion (Keras layout); without it only
    the model-level comparison is reported.
    """
    expected = keras_outputs(keras_model, list(xs))  # on every CPU (XLA for channels_first layers)
    got = _as_list(model(*xs))
    ok, max_abs, max_rel = _compare_all(got, expected, rtol, atol)
    report = VerifyReport(ok, max_abs, max_rel, rtol, atol, samples=len(xs[0]))
    if not ok and frontend_graph is not None:
        try:
            with _safe_mode(keras_model):  # probe models are built from live tensors; nothing is loaded
                report.layers = _layer_diffs(frontend_graph, keras_model, xs, rtol, atol)
        except Exception as exc:  # a diagnosis that fails must not hide the mismatch itself
            logger.warning("per-layer comparison unavailable: %s: %s", type(exc).__name__, exc)
    return report, expected


def replay(model: Any, verification: dict) -> VerifyReport:
    """Check recorded vectors (one array per model input / output) on this model's device; no TensorFlow."""
    rtol, atol = float(verification["rtol"]), float(verification["atol"])
    xs = list(verification["inputs"])
    got = _as_list(model(*xs))
    ok, max_abs, max_rel = _compare_all(got, list(verification["outputs"]), rtol, atol)
    return VerifyReport(ok, max_abs, max_rel, rtol, atol, samples=len(xs[0]))
