"""The kernel table of the numba-cuda backend and what a lowering returns.

Mirrors ``keydnn.backends.numba_cpu.ops.lowering``: a *lowering* turns one IR node
into a ``LoweredOp`` once, at compile time (attributes decoded, weights laid
out and uploaded to the device). Unlike the CPU backend, a GPU launch also
needs a grid, so a ``LoweredOp`` is *prepared* once per concrete input shape
(``prepare(in_shapes, out_shape) -> Prepared``) and the per-call work is one
bound launch per step. Every tensor a kernel sees is a flat, C-ordered device
array; shapes travel as plain integers, so a kernel compiles once per dtype,
never once per rank or layout.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from keydnn.backends.numba_cuda.device import cuda, simulator_enabled
from keydnn.backends.kernel_table import KernelTable, NodeContext, require_channels_first
from keydnn.errors import BackendError

__all__ = [
    "KERNELS", "LowerContext", "LoweredOp", "Prepared", "Lowering", "Unsupported", "register_kernel",
    "require_nchw", "THREADS", "grid_1d", "configure", "Shape",
]

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]
DeviceArray = Any
#: (operands, out, scratch) -> result: ``out`` is the step's flat output buffer (None when the op
#: does not allocate, the result then views operand 0); ``scratch`` a flat work buffer or None.
Launch = Callable[[Sequence[DeviceArray], Optional[DeviceArray], Optional[DeviceArray]], DeviceArray]

#: Threads per block of the one-thread-per-element kernels. The simulator runs every thread
#: as a Python thread, so it gets small blocks and few of them (grid-stride loops cover the rest).
THREADS = 32 if simulator_enabled() else 256
_MAX_BLOCKS = 4 if simulator_enabled() else 65535


def configure(kernel: Callable, grid: Any, block: Any) -> Callable:
    """``kernel[grid, block]``, built once per shape rather than per call.

    A real launch configuration is immutable, and building one checks the
    grid size (warning that a batch-1 grid under-fills the GPU, which we know)
    and costs microseconds; the simulator's is the kernel object itself,
    mutated by ``[]``, so there it is rebuilt at each launch.
    """
    if simulator_enabled():
        return lambda *args: kernel[grid, block](*args)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grid size .* under-utilization")
        return kernel[grid, block]


def grid_1d(n: int, threads: int = THREADS) -> int:
    """Blocks for ``n`` elements; kernels loop with a grid stride, so a capped grid still covers all."""
    return max(1, min(math.ceil(n / threads), _MAX_BLOCKS))


class Unsupported(BackendError):
    """A lowering cannot handle this node; the executor adds the node's name."""


@dataclass(frozen=True)
class Prepared:
    """One step bound to concrete shapes: the launch, and the scratch elements it needs."""

    launch: Launch
    scratch: int = 0


@dataclass(frozen=True)
class LoweredOp:
    """One node bound to its kernel and device-resident weights.

    ``allocates`` is False for ops that return a view of operand 0 (flatten,
    reshape, squeeze, expand_dims); ``inplace`` marks elementwise kernels that
    may write over operand 0 when it is dead afterwards.
    """

    prepare: Callable[[tuple[Shape, ...], Shape], Prepared]
    allocates: bool = True
    inplace: bool = False
    description: str = ""


@dataclass(frozen=True)
class LowerContext(NodeContext):
    """What a lowering may read (``kernel_table.NodeContext``), and the device uploads it makes."""

    _uploads: list = field(default_factory=list, compare=False)
    refusal = Unsupported

    def scalar(self, value: float) -> np.generic:
        """A float parameter in the compute dtype, so float32 kernels never promote to float64."""
        return self.dtype.type(value)

    def upload(self, array: np.ndarray) -> DeviceArray:
        """Copy a host array to the device once, flat, in the compute dtype; it lives with the executable."""
        flat = np.ascontiguousarray(array, dtype=self.dtype).reshape(-1)
        dev = cuda.to_device(flat if flat.size else np.zeros(1, dtype=self.dtype))
        self._uploads.append(dev)
        return dev


Lowering = Callable[[LowerContext], LoweredOp]

#: op kind -> lowering. Filled by the kernel modules through ``register_kernel``.
KERNELS: KernelTable = KernelTable()
#: Decorator: register a lowering for one or more op kinds.
register_kernel = KERNELS.register


def require_nchw(ctx: LowerContext) -> None:
    """Kernels are channels-first only; layout is canonicalized by a pass, not here."""
    require_channels_first(ctx.node.op, Unsupported, "numba-cuda")