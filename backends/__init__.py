"""Backends: turn a verified graph into an executable for a device.

The table maps a device kind to a loader that imports its backend lazily, so
that using the CPU never imports CUDA support and vice versa.
"""

from __future__ import annotations

import importlib
from typing import Callable, Protocol

import numpy as np

from keydnn.errors import BackendError
from keydnn.ir.graph import Graph

__all__ = ["Executable", "BACKENDS", "compile_for"]


class Executable(Protocol):
    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]: ...


#: device kind -> (module, factory name, human name)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "cpu": ("keydnn.backends.numba_cpu", "compile_graph", "numba-cpu"),
    "cuda": ("keydnn.backends.numba_cuda", "compile_graph", "numba-cuda"),
}


def compile_for(graph: Graph, device: object) -> Executable:
    """Compile ``graph`` for ``device`` (a keydnn.Device)."""
    kind = getattr(device, "kind", str(device))
    if kind not in BACKENDS:
        raise BackendError(f"no backend for device {device}; supported: {', '.join(BACKENDS)}")
    module_name, factory, human = BACKENDS[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("keydnn"):
            raise BackendError(f"the {human} backend is not available yet in this keydnn version; "
                               "use device='cpu'") from exc
        raise BackendError(f"the {human} backend needs {exc.name!r}, which is not installed") from exc
    make: Callable[..., Executable] = getattr(module, factory)
    if kind == "cuda":
        return make(graph, device=device)
    return make(graph)
