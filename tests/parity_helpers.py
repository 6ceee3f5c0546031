"""Sources and parity checks shared by the Keras-3-era layer tests (attention, normalization, Keras operations).

``conftest.keras_sources`` builds every model in Keras 3 and in tf_keras;
several of these layers and operations exist only in Keras 3, so
``k3_sources`` gives the three Keras 3 forms (live, ``.keras``, ``.h5``) of one
model, and ``sources`` picks whichever set the model can be built in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

import keydnn
from keydnn.keras_runner import keras_outputs
from keydnn.ir import run_reference

__all__ = ["k3_sources", "all_sources", "check_parity", "inputs_for", "fan_in_scaled", "TOL"]

TOL = dict(rtol=1e-4, atol=1e-4)


def fan_in_scaled(model: Any) -> None:
    """Kernels divided by the square root of their fan-in: with the fixtures' N(0, 0.5) weights a deep
    model's activations grow into the thousands, where float32 rounding alone exceeds 1e-4."""
    model.set_weights([w / np.sqrt(np.prod(w.shape[:-1])) if w.ndim > 1 else w for w in model.get_weights()])


def k3_sources(tmp: Path, name: str, build: Callable[[Any], Any], seed: int = 0,
               scale: bool = False) -> list[tuple[str, Any, Any]]:
    """[(form, model_or_path, live)] for the live Keras 3 model and its ``.keras`` and ``.h5`` files."""
    import tensorflow as tf
    from fixtures.make_fixtures import _quiet_save, randomize_weights

    model = build(tf.keras)
    randomize_weights(model, seed)
    if scale:
        fan_in_scaled(model)
    tmp.mkdir(parents=True, exist_ok=True)
    zip_path, h5_path = tmp / f"{name}.keras", tmp / f"{name}.k3.h5"
    model.save(zip_path)
    _quiet_save(model, h5_path)
    return [("live-keras3", model, model), ("keras3-zip", zip_path, model), ("keras3-h5", h5_path, model)]


def all_sources(tmp: Path, name: str, build: Callable[[Any], Any], seed: int = 0) -> list[tuple[str, Any, Any]]:
    """The three Keras 3 forms plus the live tf_keras model and its ``.h5``, with fan-in scaled kernels."""
    import tf_keras
    from fixtures.make_fixtures import _quiet_save, randomize_weights

    out = k3_sources(tmp, name, build, seed, scale=True)
    model = build(tf_keras)
    randomize_weights(model, seed)
    fan_in_scaled(model)
    path = tmp / f"{name}.k2.h5"
    _quiet_save(model, path)
    return out + [("live-tf_keras", model, model), ("keras2-h5", path, model)]


def inputs_for(model: Any, batch: int = 3, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch,) + tuple(t.shape)[1:]).astype("f4") for t in model.inputs]


def check_parity(sources: list[tuple[str, Any, Any]], *, inputs: list[np.ndarray] | None = None,
                 tol: dict | None = None, device: str = "cpu", reference: bool = True, **options: Any) -> None:
    """keydnn (and its reference interpreter) == Keras, from every source form given."""
    tol = tol or TOL
    for form, src, live in sources:
        xs = inputs if inputs is not None else inputs_for(live)
        want = keras_outputs(live, xs)  # on every CPU: XLA where TensorFlow lacks a kernel (NCHW, dilation)
        model = keydnn.from_keras(src, device=device, **options)
        got = model(*xs)
        got = list(got) if isinstance(got, (list, tuple)) else [got]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(g), w, err_msg=f"keydnn vs Keras from {form}", **tol)
        if reference:
            feed = {v.name: x for v, x in zip(model.graph.inputs, xs)}
            for r, w in zip(run_reference(model.graph, feed), want):
                np.testing.assert_allclose(r, w, err_msg=f"reference vs Keras from {form}", **tol)
