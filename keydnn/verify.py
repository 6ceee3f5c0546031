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

__all__ = ["VerifyReport", "LayerDiff", "load_keras_model", "sample_inputs", "verify_against_keras", "replay",
           "compare"]

logger = logging.getLogger(__name__)

_TF_HINT = ("this operation runs the Keras model and needs TensorFlow; install it with "
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
        raise ImportError(_TF_HINT) from exc
    kwargs: dict[str, Any] = {"compile": False}
    if keras_major >= 3:
        kwargs["safe_mode"] = True
    return keras.models.load_model(os.fspath(source), **kwargs)


def sample_inputs(input_type: Any, n: int = 8, seed: int = 0) -> np.ndarray:
    """Reproducible inputs of the model's input shape (standard normal)."""
    shape = tuple(n if isinstance(d, str) else d for d in input_type.shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(input_type.dtype)


def _keras_layer_outputs(keras_model: Any, x: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    h = x
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


def _frontend_values(graph: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every value of the (unoptimized) graph, by Keras layer name of its producer (last node wins)."""
    env: dict[str, np.ndarray] = dict(graph.weights)
    env[graph.inputs[0].name] = x
    by_layer: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        out = REFERENCE_KERNELS[node.op.kind](node.op, [env[i] for i in node.inputs])
        env[node.outputs[0].name] = np.asarray(out)
        if node.source is not None:
            by_layer[node.source] = env[node.outputs[0].name]
    return by_layer


def verify_against_keras(model: Any, keras_model: Any, x: np.ndarray, *, frontend_graph: Any = None,
                         rtol: float = 1e-4, atol: float = 1e-5) -> tuple[VerifyReport, np.ndarray]:
    """Run both models on ``x``; on a mismatch, locate the first Keras layer that diverges."""
    expected = np.asarray(keras_model(x, training=False))
    got = model(x)
    ok, max_abs, max_rel = compare(got, expected, rtol, atol)
    report = VerifyReport(ok, max_abs, max_rel, rtol, atol, samples=len(x))
    if not ok and frontend_graph is not None:
        ours = _frontend_values(frontend_graph, x.astype(np.float64))
        for index, (name, cls, value) in enumerate(_keras_layer_outputs(keras_model, x)):
            if name not in ours:
                continue
            layer_ok, layer_abs, _ = compare(ours[name], value, rtol, atol)
            report.layers.append(LayerDiff(index, name, cls, layer_abs, layer_ok))
    return report, expected


def replay(model: Any, verification: dict) -> VerifyReport:
    """Check recorded vectors (inputs, Keras outputs) on this model's device; no TensorFlow."""
    rtol, atol = float(verification["rtol"]), float(verification["atol"])
    worst = (True, 0.0, 0.0)
    n = 0
    for x, expected in zip(verification["inputs"], verification["outputs"]):
        got = model(x)
        if not isinstance(got, np.ndarray) and hasattr(got, "copy_to_host"):
            got = got.copy_to_host()
        ok, max_abs, max_rel = compare(got, expected, rtol, atol)
        worst = (worst[0] and ok, max(worst[1], max_abs), max(worst[2], max_rel))
        n += len(x)
    return VerifyReport(worst[0], worst[1], worst[2], rtol, atol, samples=n)
