"""Activation functions as one device function per dtype, and their compile-time encoding.

An activation (a standalone relu/activation node, or the epilogue fused into
conv2d/dense) is encoded once as an integer code plus four parameters. The
code is a compile-time constant of the device function, so a kernel carries
only the one formula it applies (an epilogue with every branch inlined would
cost a GEMM kernel registers and occupancy); the parameters are run-time
arguments, so layers that differ only in them share one compiled kernel. The
codes are the CPU backend's. Parameters and literals are in the compute
dtype, so a float32 kernel never promotes to float64 (slow on most GPUs);
the formulas are the reference's (``keydnn.ir.functions``, rendered by
``keydnn.backends.function_source``).
"""

from __future__ import annotations

import logging
from typing import Callable, NamedTuple, Optional

import numpy as np

from keydnn.backends.epilogues import ACTIVATION_CODES, LINEAR, Encoded  # noqa: F401  (re-exported)
from keydnn.backends.epilogues import encode_activation as _encode_activation
from keydnn.backends.numba_cuda.functions import make_function
from keydnn.backends.numba_cuda.lowering import Unsupported
from keydnn.ir.ops.base import OpBase

__all__ = ["ACTIVATION_CODES", "Encoded", "Epilogue", "LINEAR", "encode_activation", "epilogue_for",
           "make_activation"]

logger = logging.getLogger(__name__)


def encode_activation(op: Optional[OpBase]) -> Encoded:
    """Encode a relu/activation op (standalone or a fused epilogue); None is the identity."""
    return _encode_activation(op, Unsupported, "numba-cuda")


class Epilogue(NamedTuple):
    """What a kernel factory and its launches need: the code (compiled in), the parameters (passed)."""

    code: int
    params: tuple


def epilogue_for(op: Optional[OpBase], dtype: np.dtype) -> Epilogue:
    """Encode ``op`` (None: identity) with its parameters as ``dtype`` scalars, the kernels' argument types."""
    code, *params = encode_activation(op)
    return Epilogue(code, tuple(dtype.type(p) for p in params))


def make_activation(dtype_name: str, code: int) -> Callable:
    """``act(v, p0, p1, p2, p3)`` for one activation ``code``, with ``dtype_name`` literals: the device function
    that ``keydnn.backends.function_source`` renders from the formula in ``keydnn.ir.functions``."""
    return make_function(dtype_name, code)
