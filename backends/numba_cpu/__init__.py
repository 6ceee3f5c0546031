"""numba-cpu: the default backend; one @numba.njit kernel per IR op, run from a precomputed plan.

Importing the package registers every kernel in ``KERNELS`` (op kind ->
lowering). Kernels are cached on disk (``cache=True``), so only the first
process on a machine pays the compile.
"""

from __future__ import annotations

import logging

from keydnn.backends.numba_cpu import kernels_conv as _kernels_conv  # noqa: F401  (registers)
from keydnn.backends.numba_cpu import kernels_dense as _kernels_dense  # noqa: F401  (registers)
from keydnn.backends.numba_cpu import kernels_elementwise as _kernels_elementwise  # noqa: F401  (registers)
from keydnn.backends.numba_cpu import kernels_merge as _kernels_merge  # noqa: F401  (registers)
from keydnn.backends.numba_cpu import kernels_norm as _kernels_norm  # noqa: F401  (registers)
from keydnn.backends.numba_cpu import kernels_pool as _kernels_pool  # noqa: F401  (registers)
from keydnn.backends.numba_cpu import kernels_shape as _kernels_shape  # noqa: F401  (registers)
from keydnn.backends.numba_cpu import kernels_spatial as _kernels_spatial  # noqa: F401  (registers)
from keydnn.backends.numba_cpu.executor import NumbaCpuExecutable, compile_graph
from keydnn.backends.numba_cpu.lowering import KERNELS, LowerContext, LoweredOp, Unsupported, register_kernel
from keydnn.backends.numba_cpu.plan import Plan, Step

__all__ = [
    "NumbaCpuExecutable", "compile_graph", "KERNELS", "LowerContext", "LoweredOp", "Unsupported",
    "register_kernel", "Plan", "Step",
]

logger = logging.getLogger(__name__)
