"""Real model sizes for the CPU benchmark: keras.applications models with random weights.

``MobileNetV2``, ``ResNet50``, ``EfficientNetB0`` and ``NASNetMobile`` (771 layers) at 224x224x3, built with
``weights=None`` (nothing is downloaded) and with their BatchNormalization
statistics randomized (seeded), so that folding them is exercised and the
outputs are not trivially uniform. They run at batch 1 and 8. Besides latency,
the benchmark reports each model's cold compile (a fresh process with an empty
compile cache: load the artifact, one inference; wall time and peak RSS), its
warm start (the same in a second fresh process that finds the compiled code in
the cache) and the GFLOP/s of the largest rows beside the machine's nominal FMA peak.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["APPLICATIONS", "APP_BATCHES", "application_models", "graph_flops", "fma_peak_gflops"]

#: Model name -> keras.applications constructor name.
APPLICATIONS = {"MobileNetV2": "MobileNetV2", "ResNet50": "ResNet50", "EfficientNetB0": "EfficientNetB0",
                "NASNetMobile": "NASNetMobile"}
APP_BATCHES = (1, 8)
SIZE = 224


def application_models(keras: Any, size: int = SIZE, seed: int = 0) -> dict[str, Any]:
    """The application models, random weights, randomized BatchNormalization statistics."""
    rng = np.random.default_rng(seed)
    models = {}
    for name, ctor in APPLICATIONS.items():
        keras.utils.set_random_seed(seed)
        model = getattr(keras.applications, ctor)(weights=None, input_shape=(size, size, 3))
        for layer in model.layers:
            if type(layer).__name__ == "BatchNormalization":
                weights = layer.get_weights()
                c = weights[0].shape[0]
                fresh = []
                names = [w.path.split("/")[-1] if hasattr(w, "path") else w.name for w in layer.weights]
                for wname, w in zip(names, weights):
                    if "gamma" in wname or "variance" in wname:
                        fresh.append(rng.uniform(0.5, 1.5, c).astype(w.dtype))
                    else:
                        fresh.append(rng.normal(0, 0.1, c).astype(w.dtype))
                layer.set_weights(fresh)
        models[name] = model
    return models


def graph_flops(graph: Any, batch: int) -> float:
    """Floating-point operations of one call (2 per multiply-add of every conv2d, dense and matmul node)."""
    total = 0.0
    for node in graph.nodes:
        kind = node.op.kind
        out = node.outputs[0].type
        if out is None:
            continue
        outputs = float(np.prod([batch if isinstance(d, str) else d for d in out.shape]))
        if kind == "conv2d":
            w = graph.weights[node.inputs[1]]
            total += 2.0 * outputs * int(np.prod(w.shape[1:]))
        elif kind in ("dense", "matmul"):
            w = graph.weights.get(node.inputs[1])
            depth = w.shape[0] if w is not None else 0
            total += 2.0 * outputs * depth
    return total


def fma_peak_gflops(lanes: int, cores: int | None = None) -> float | None:
    """Nominal single-precision FMA peak: cores x clock x 2 FMA units x lanes x 2 flops (None without a clock)."""
    cores = cores or os.cpu_count() or 1
    try:
        with open("/proc/cpuinfo") as fh:
            mhz = [float(line.split(":", 1)[1]) for line in fh if line.startswith("cpu MHz")]
    except OSError:
        return None
    if not mhz:
        return None
    return cores * (max(mhz) / 1000.0) * 2 * lanes * 2
