"""What a step of the per-op plan is (``LoweredOp``), the per-op kernel table, and the jit options every
numba function of the backend compiles with (defined in ``numba_cpu.jit_options``, re-exported).

A step is a ``LoweredOp``: bound at compile time, so that a call only moves activations. Every kind with a
code generator runs as a one-node generated program (``steps``); ``KERNELS`` (op kind -> lowering) holds
only the per-op kernels of the kinds ``modes.PER_OP_ONLY`` names, until they get emitters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from keydnn.backends.kernel_table import KernelTable, require_channels_first
from keydnn.backends.numba_cpu.jit_options import (  # noqa: F401  (re-exported)
    HELPER_JIT_OPTIONS, JIT_OPTIONS, PARALLEL_JIT_OPTIONS, Unsupported,
)
from keydnn.ir.graph import Node
from keydnn.ir.types import TensorType

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


@dataclass(frozen=True)
class LowerContext:
    """What a lowering may read: the node's operand and result types, and the weights."""

    node: Node
    in_types: tuple[TensorType, ...]
    out_type: TensorType
    weights: Mapping[str, np.ndarray]

    @property
    def dtype(self) -> np.dtype:
        return self.out_type.np_dtype

    def constant(self, position: int) -> Optional[np.ndarray]:
        """Operand ``position`` as a private, writable, C-contiguous array in the result dtype.

        A private copy keeps the kernels' argument types uniform (numba types
        read-only arrays separately, which would mean another compile) and
        isolates the executable from whoever else holds the weights.
        """
        if position >= len(self.node.inputs):
            return None
        name = self.node.inputs[position]
        if name not in self.weights:
            raise Unsupported(f"operand {position} (%{name}) must be a constant weight")
        return np.array(self.weights[name], dtype=self.dtype, order="C", copy=True)


Lowering = Callable[[LowerContext], LoweredOp]

#: op kind -> lowering. Filled by the kernel modules through ``register_kernel``.
KERNELS: KernelTable = KernelTable()
#: Decorator: register a lowering for one or more op kinds.
register_kernel = KERNELS.register


def require_nchw(ctx: LowerContext) -> None:
    """Kernels are channels-first only; layout is canonicalized by a pass, not here."""
    require_channels_first(ctx.node.op, Unsupported, "numba-cpu")