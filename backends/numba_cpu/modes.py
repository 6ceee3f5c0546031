"""``compile_graph``: the backend's entry point, and its two execution modes.

Numba-free on purpose: a graph whose generated code was prebuilt into a
library (``cg_aot``) is loaded and run without importing the JIT; the per-op
kernels (and numba) are imported only when something needs them.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Optional

from keydnn.errors import BackendError, SlowPathWarning
from keydnn.ir.graph import Graph

__all__ = ["MODES", "default_mode", "compile_graph", "load_kernels"]

logger = logging.getLogger(__name__)

#: Execution modes of ``compile_graph``: whole-graph generated code, or one kernel per op (debugging).
MODES = ("codegen", "ops")


def default_mode() -> str:
    """``$KEYDNN_CPU_MODE`` ("codegen" or "ops"), else "codegen"."""
    mode = os.environ.get("KEYDNN_CPU_MODE", "codegen").strip().lower() or "codegen"
    if mode not in MODES:
        raise BackendError(f"KEYDNN_CPU_MODE={mode!r} is not a numba-cpu mode; use one of {', '.join(MODES)}")
    return mode


def load_kernels() -> None:
    """Prepare the per-op mode: numba compiles for the target tier. Every op kind runs generated code in both
    modes (the per-op mode as one-node programs), so no per-op kernel is left to register (``ops.lowering``'s
    ``KERNELS`` stays as the place a kind without an emitter would register one; ``PER_OP_ONLY`` is empty)."""
    from keydnn.backends.numba_cpu.codegen.target import apply_to_numba

    apply_to_numba()


#: Op kinds the whole-graph generator has no emitter for: graphs with them run on the per-op kernels. None
#: today: the last ones, ``fold_time`` / ``unfold_time`` (TimeDistributed over a non-Dense layer, ConvLSTM's
#: input convolution) and ``conv_lstm``, run as generated code too (``codegen.program.Val.fold``,
#: ``codegen.emit_conv_recurrent``).
PER_OP_ONLY: frozenset[str] = frozenset()


def _per_op_only(graph: Graph) -> str:
    """Why ``graph`` must run on the per-op kernels ('' when codegen may take it): an op kind without an
    emitter. A symbolic non-batch input axis (variable sequence length) runs generated code too: the
    executable specializes per concrete input shape on first use and keeps a bounded LRU of compiled
    shapes (``cg_exec.MAX_VARIANTS``), so a repeated length never compiles again."""
    kinds = sorted({n.op.kind for n in graph.nodes} & PER_OP_ONLY)
    if kinds:
        return f"ops {', '.join(kinds)} have per-op kernels only"
    return ""


def _slow_path(graph: Graph, why: str) -> None:
    """Say, as a ``SlowPathWarning``, that ``graph`` leaves generated code for the per-op kernels, and why
    (the op kinds or the construct): same results, slower at small batch, which a user should hear about."""
    warnings.warn(f"graph {graph.name!r} runs on the numba-cpu per-op kernels, not generated code: {why}",
                  SlowPathWarning, stacklevel=4)


def compile_graph(graph: Graph, mode: Optional[str] = None):
    """Compile a verified, typed, channels-first graph for the CPU.

    ``mode="codegen"`` (the default, or ``$KEYDNN_CPU_MODE``) generates one
    shape-specialized numba function for the whole graph; a graph it does not
    handle (mixed dtypes, a transpose that moves the batch axis) runs in the
    per-op mode instead. ``mode="ops"`` always runs one step per op (each a
    one-node generated program on the same kernel library), with the Python
    loop between them (slower at small batch; every node's result can be
    inspected with ``trace``).
    """
    mode = default_mode() if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    why = ""
    if mode == "codegen":
        why = _per_op_only(graph)
        if not why:
            from keydnn.backends.numba_cpu.runtime.executable import codegen_or_reason

            exe, why = codegen_or_reason(graph)
            if exe is not None:
                return exe
    load_kernels()
    from keydnn.backends.numba_cpu.ops.executor import NumbaCpuExecutable

    exe = NumbaCpuExecutable(graph)  # raises, naming the op, where the per-op kernels cannot run it either
    if why:
        _slow_path(graph, why)
    return exe
