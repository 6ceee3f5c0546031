"""What a step of the per-op plan is (``LoweredOp``), the per-op kernel table, and the jit options every
numba function of the backend compiles with (defined in ``numba_cpu.jit_options``, re-exported).

A step is a ``LoweredOp``: bound at compile time, so that a call only moves activations. Every kind with a
code generator runs as a one-node generated program (``steps``); ``KERNELS`` (op kind -> lowering) holds
only the per-op kernels of the kinds ``modes.PER_OP_ONLY`` names, until they get emitters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from keydnn.backends.kernel_table import KernelTable, NodeContext, require_channels_first
from keydnn.backends.numba_cpu.jit_options import (  # noqa: F401  (re-exported)
    HELPER_JIT_OPTIONS, JIT_OPTIONS, PARALLEL_JIT_OPTIONS, Unsupported,
)

__all__ = [
    "JIT_OPTIONS", "PARALLEL_JIT_OPTIONS", "HELPER_JIT_OPTIONS", "KERNELS", "LoweredOp", "LowerContext", "Lowering",
    "Unsupported", "register_kernel", "require_nchw",
]

logger = logging.getLogger(__name__)

#: (inputs, out) -> result. ``out`` is the preallocated, C-contiguous output buffer
#: (``None`` when the op does not allocate); the result is ``out`` or a view.
RunFn = Callable[[Sequence[np.ndarray], Optional[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class LoweredOp:
    """One node bound to its kernel, attributes and weights.

    ``allocates`` is False for ops that return a view of their first operand
    (flatten, reshape); ``inplace`` marks elementwise kernels that may write
    over their first operand when it is dead afterwards.
    """

    run: RunFn
    allocates: bool = True
    inplace: bool = False
    description: str = ""
    #: Rough cost per output element (a conv's reduction depth), so the executor can run
    #: small steps on one thread: waking a thread pool costs more than they do.
    work_per_element: int = 1


class LowerContext(NodeContext):
    """What a per-op lowering may read (``kernel_table.NodeContext``); refuses with ``Unsupported``."""

    refusal = Unsupported


Lowering = Callable[[LowerContext], LoweredOp]

#: op kind -> lowering. Filled by the kernel modules through ``register_kernel``.
KERNELS: KernelTable = KernelTable()
#: Decorator: register a lowering for one or more op kinds.
register_kernel = KERNELS.register


def require_nchw(ctx: LowerContext) -> None:
    """Kernels are channels-first only; layout is canonicalized by a pass, not here."""
    require_channels_first(ctx.node.op, Unsupported, "numba-cpu")