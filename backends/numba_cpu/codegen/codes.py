"""Numbers the kernels and the code generator agree on: activation codes, merge codes, batch-norm folding.

Pure Python (no numba), so that generating code, keying the compile cache and
loading a prebuilt library never import the JIT.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from keydnn.backends.epilogues import (  # noqa: F401  (re-exported: the kernels' names)
    ACTIVATION_CODES, ELU, EXPONENTIAL, GELU, GELU_TANH, HARD_SIGMOID, HARD_SIGMOID_K2, LINEAR, NO_EPILOGUE,
    RELU, RELU0, SELU, SIGMOID, SOFTPLUS, SOFTSIGN, SWISH, TANH, Encoded,
)
from keydnn.backends.epilogues import encode_activation as _encode_activation
from keydnn.backends.numba_cpu.ops.lowering import Unsupported
from keydnn.ir.ops.base import OpBase

__all__ = [
    "Epilogue", "ACTIVATION_CODES", "NO_EPILOGUE", "encode_activation", "MERGE_CODES", "batch_norm_params",
    "LINEAR", "RELU0", "RELU", "COPY", "ADD", "SUB", "MUL", "MAX", "MIN",
]

logger = logging.getLogger(__name__)

#: (code, p0, p1, p2, p3): what a kernel needs to apply one activation (shared with numba-cuda).
Epilogue = Encoded


def encode_activation(op: Optional[OpBase]) -> Epilogue:
    """Encode a relu/activation op (standalone or a fused epilogue) for the kernels."""
    return _encode_activation(op, Unsupported, "numba-cpu")


COPY, ADD, SUB, MUL, MAX, MIN = 0, 1, 2, 3, 4, 5
#: merge op kind -> how each operand after the first combines into the result.
MERGE_CODES: dict[str, int] = {"add": ADD, "avg": ADD, "sub": SUB, "mul": MUL, "max": MAX, "min": MIN}


def batch_norm_params(weights, names: Sequence[str], epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of inference batch norm, in float64: ``x * s + t``."""
    mean, var, gamma, beta = (np.asarray(weights[n], dtype=np.float64).reshape(-1) for n in names)
    s = gamma / np.sqrt(var + epsilon)
    return s, beta - mean * s
