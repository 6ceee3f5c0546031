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
from keydnn.backends.numba_cpu.jit_options import Unsupported
from keydnn.ir.ops.base import OpBase

__all__ = [
    "Epilogue", "ACTIVATION_CODES", "NO_EPILOGUE", "encode_activation", "MERGE_CODES", "batch_norm_params",
    "LINEAR", "RELU0", "RELU", "COPY", "ADD", "SUB", "MUL", "MAX", "MIN", "TANH_COEFFS",
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


#: Eigen's rational tanh, the one tanh approximation of the float32 helpers (``kernels.vmath.tanh_rational``):
#: clamp, then x * P(x^2) / Q(x^2) (P: 7 coefficients, highest first; Q: 4), then 1 and 1/2. Here, not in
#: ``vmath``, so that the sequence emitter puts them in the weight blob without importing numba.
TANH_COEFFS = (7.90531110763549805, -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
               5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03,
               1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03, 1.0, 0.5)
