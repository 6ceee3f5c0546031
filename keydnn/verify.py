"""Verification: compare a converted model with Keras, find the first diverging layer, replay later.

``verify_against_keras`` needs TensorFlow (it runs the Keras model); the
recorded vectors it produces are stored in the artifact, and ``replay`` checks
them on any device without TensorFlow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keydnn.ir.reference import REFERENCE_KERNELS

__all__ = ["TF_HINT", "VerifyReport", "LayerDiff", "load_keras_model", "sample_inputs", "verify_against_keras", "replay",
           "compare"]

logger = logging.getLogger(__name__)

TF_HINT = ("this operation runs the Keras model and needs TensorFlow; install it with "
            "`pip install 'keydnn[keras]'` (or `pip install tensorflow-cpu`, plus `tf_keras` for Keras 2 files)")


@dataclass(frozen=True)
class LayerDiff:
    """How far one Keras layer's output is from keydnn's value for it."""

    index: int
    name: str
    keras_class: str
    max_abs: float
    ok: bool


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
            lines.append(f"first diverging layer: {bad.index} {bad.name!r} ({bad.keras_class}), "
                         f"max abs difference {bad.max_abs:.3g}")
        if self.layers and not self.ok:
            lines.append("per-layer max abs difference:")
            lines += [f"  {d.index:3d} {d.name:<28} {d.keras_class:<24} {d.max_abs:.3g}{'' if d.ok else '  <--'}"
                      for d in self.layers]
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


def sample_inputs(input_types: Any, n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Reproducible inputs (standard normal), one array per model input, batch ``n``."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in input_types:
        shape = tuple(n if isinstance(d, str) else d for d in t.shape)
        arrays.append(rng.standard_normal(shape).astype(t.dtype))
    return arrays


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


def _keras_layer_outputs(keras_model: Any, xs: list[np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """Each layer's output, for stacks (Sequential): calling layer after layer."""
    if len(xs) != 1 or type(keras_model).__name__ != "Sequential":
        return []  # Functional models: only the model-level comparison is reported
    h = xs[0]
    outs = []
    for layer in keras_model.layers:
        h = layer(h, training=False) if "training" in _call_args(layer) else layer(h)
        outs.append((layer.name, type(layer).__name__, np.asarray(h)))
    return outs


def _call_args(layer: Any) -> tuple[str, ...]:
    import inspect

    try:
        return tuple(inspect.signature(layer.call).parameters)
    except (TypeError, ValueError):
        return ()


def _frontend_values(graph: Any, xs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Every value of the (unoptimized) graph, by Keras layer name of its producer (last node wins)."""
    env: dict[str, np.ndarray] = dict(graph.weights)
    env.update({v.name: x for v, x in zip(graph.inputs, xs)})
    by_layer: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        out = REFERENCE_KERNELS[node.op.kind](node.op, [env[i] for i in node.inputs])
        env[node.outputs[0].name] = np.asarray(out)
        if node.source is not None:
            by_layer[node.source] = env[node.outputs[0].name]
    return by_layer


def verify_against_keras(model: Any, keras_model: Any, xs: list[np.ndarray], *, frontend_graph: Any = None,
                         rtol: float = 1e-4, atol: float = 1e-5) -> tuple[VerifyReport, list[np.ndarray]]:
    """Run both models on ``xs`` (one array per input); on a mismatch, locate the first diverging Keras layer."""
    expected = _as_list(keras_model(xs[0] if len(xs) == 1 else list(xs), training=False))
    got = _as_list(model(*xs))
    ok, max_abs, max_rel = _compare_all(got, expected, rtol, atol)
    report = VerifyReport(ok, max_abs, max_rel, rtol, atol, samples=len(xs[0]))
    if not ok and frontend_graph is not None:
        ours = _frontend_values(frontend_graph, [x.astype(np.float64) for x in xs])
        for index, (name, cls, value) in enumerate(_keras_layer_outputs(keras_model, xs)):
            if name not in ours:
                continue
            layer_ok, layer_abs, _ = compare(ours[name], value, rtol, atol)
            report.layers.append(LayerDiff(index, name, cls, layer_abs, layer_ok))
    return report, expected


def replay(model: Any, verification: dict) -> VerifyReport:
    """Check recorded vectors (one array per model input / output) on this model's device; no TensorFlow."""
    rtol, atol = float(verification["rtol"]), float(verification["atol"])
    xs = list(verification["inputs"])
    got = _as_list(model(*xs))
    ok, max_abs, max_rel = _compare_all(got, list(verification["outputs"]), rtol, atol)
    return VerifyReport(ok, max_abs, max_rel, rtol, atol, samples=len(xs[0]))
