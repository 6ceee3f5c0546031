"""numba-cpu: the default backend.

Two execution modes behind ``compile_graph`` (see ``modes``): generated code
for the whole graph (``codegen``, the default; ``codegen/``, ``kernels/``,
``runtime/``, with a disk cache of compiled code and prebuilt libraries), and
one step per IR op run from a precomputed plan (``ops``): each node a one-node
generated program on the same emitters and helpers, except the kinds
``modes.PER_OP_ONLY`` names, whose per-op kernels ``KERNELS`` maps. Importing
the package imports neither numba nor the kernels: the names below that need
them load on first use, so that running a prebuilt library stays light.
"""

from __future__ import annotations

import importlib
import logging

from keydnn.backends.numba_cpu.runtime.cache import add_compile_listener, cache_root, remove_compile_listener
from keydnn.backends.numba_cpu.ops.lowering import LowerContext, LoweredOp, Unsupported, register_kernel
from keydnn.backends.numba_cpu.modes import MODES, compile_graph, default_mode, load_kernels
from keydnn.backends.numba_cpu.ops.plan import Plan, Step

__all__ = [
    "NumbaCpuExecutable", "CodegenExecutable", "compile_graph", "MODES", "default_mode", "KERNELS", "EMITTERS",
    "LowerContext", "LoweredOp", "Unsupported", "register_kernel", "Plan", "Step", "add_compile_listener",
    "remove_compile_listener", "cache_root",
]

logger = logging.getLogger(__name__)


def _apply_target() -> None:
    """A forced code-generation tier (``KEYDNN_CPU_TARGET``) reaches numba before any module here imports it."""
    from keydnn.backends.numba_cpu.codegen.target import apply_to_numba
    from keydnn.errors import BackendError

    try:
        apply_to_numba()
    except BackendError:  # a bad value: compiling reports it, with the supported tiers
        pass


_apply_target()

_LAZY = {
    "KERNELS": "keydnn.backends.numba_cpu.ops.lowering",
    "NumbaCpuExecutable": "keydnn.backends.numba_cpu.ops.executor",
    "CodegenExecutable": "keydnn.backends.numba_cpu.runtime.executable",
    "EMITTERS": "keydnn.backends.numba_cpu.runtime.executable",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in ("KERNELS", "NumbaCpuExecutable"):
        load_kernels()
    return getattr(importlib.import_module(module), name)
