"""numba-cuda: the same graphs on NVIDIA GPUs (and, in tests, on Numba's CUDA simulator).

Mirrors numba-cpu: importing the package registers a lowering per op kind in
``KERNELS``; ``compile_graph(graph, device)`` lowers every node once
(uploading weights), and the executable prepares launches and device buffers
once per input shape. conv2d and dense share one shared-memory tiled GEMM
template (implicit GEMM for conv) with fused bias + activation epilogues.
Merge ops (add ... min with broadcasting, concat) read all their operands in
one launch, so a DAG costs no more launches than a chain of the same nodes.
"""

from __future__ import annotations

import logging

from keydnn.backends.numba_cuda import kernels_conv as _kernels_conv  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_dense as _kernels_dense  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_elementwise as _kernels_elementwise  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_merge as _kernels_merge  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_pool as _kernels_pool  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_shape as _kernels_shape  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_recurrent as _kernels_recurrent  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_conv_recurrent as _kernels_conv_recurrent  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_reduce as _kernels_reduce  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_math as _kernels_math  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_resize as _kernels_resize  # noqa: F401  (registers)
from keydnn.backends.numba_cuda import kernels_3d as _kernels_3d  # noqa: F401  (registers)
from keydnn.backends.numba_cuda.device import device_count, require_device, simulator_enabled
from keydnn.backends.numba_cuda.executor import CudaExecutable, compile_graph
from keydnn.backends.numba_cuda.lowering import KERNELS, LowerContext, LoweredOp, Prepared, Unsupported, register_kernel
from keydnn.backends.numba_cuda.plan import Plan, ShapePlan, Step

__all__ = [
    "CudaExecutable", "compile_graph", "KERNELS", "LowerContext", "LoweredOp", "Prepared", "Unsupported",
    "register_kernel", "Plan", "ShapePlan", "Step", "device_count", "require_device", "simulator_enabled",
]

logger = logging.getLogger(__name__)
