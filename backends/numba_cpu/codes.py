"""Numbers the kernels and the code generator agree on: activation codes, merge codes, batch-norm folding.

Pure Python (no numba), so that generating code, keying the compile cache and
loading a prebuilt library never import the JIT.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import numpy as np

from keydnn.backends.numba_cpu.lowering import Unsupported
from keydnn.ir.ops.base import OpBase

__all__ = [
    "Epilogue", "ACTIVATION_CODES", "NO_EPILOGUE", "encode_activation", "MERGE_CODES", "batch_norm_params",
    "LINEAR", "RELU0", "RELU", "COPY", "ADD", "SUB", "MUL", "MAX", "MIN",
]

logger = logging.getLogger(__name__)

#: (code, p0, p1, p2, p3): what a kernel needs to apply one activation.
Epilogue = tuple[int, float, float, float, float]

LINEAR, RELU0, RELU, SIGMOID, TANH, SOFTPLUS, SOFTSIGN, ELU, SELU = 0, 1, 2, 3, 4, 5, 6, 7, 8
GELU, GELU_TANH, SWISH, EXPONENTIAL, HARD_SIGMOID, HARD_SIGMOID_K2 = 9, 10, 11, 12, 13, 14

#: Activation function name (ir.ops.ACTIVATION_FUNCTIONS) -> kernel code.
ACTIVATION_CODES: dict[str, int] = {
    "linear": LINEAR, "sigmoid": SIGMOID, "tanh": TANH, "softplus": SOFTPLUS, "softsign": SOFTSIGN,
    "elu": ELU, "selu": SELU, "gelu": GELU, "gelu_tanh": GELU_TANH, "swish": SWISH,
    "exponential": EXPONENTIAL, "hard_sigmoid": HARD_SIGMOID, "hard_sigmoid_k2": HARD_SIGMOID_K2,
}

NO_EPILOGUE: Epilogue = (LINEAR, 0.0, 0.0, 0.0, 0.0)

def _encode_relu(op: OpBase) -> Epilogue:
    if op.max_value is None and op.negative_slope == 0.0 and op.threshold == 0.0:
        return (RELU0, 0.0, 0.0, 0.0, 0.0)
    has_max = op.max_value is not None
    return (RELU, float(op.threshold), float(op.max_value or 0.0), 1.0 if has_max else 0.0,
            float(op.negative_slope))


def _encode_function(op: OpBase) -> Epilogue:
    code = ACTIVATION_CODES.get(op.function)
    if code is None:
        raise Unsupported(f"activation function {op.function!r} has no numba-cpu kernel; "
                          f"supported: {', '.join(sorted(ACTIVATION_CODES))}")
    return (code, float(op.alpha), 0.0, 0.0, 0.0)


_ENCODERS: dict[str, Callable[[OpBase], Epilogue]] = {"relu": _encode_relu, "activation": _encode_function}


def encode_activation(op: Optional[OpBase]) -> Epilogue:
    """Encode a relu/activation op (standalone or a fused epilogue) for the kernels."""
    if op is None:
        return NO_EPILOGUE
    encoder = _ENCODERS.get(op.kind)
    if encoder is None:
        raise Unsupported(f"{op.kind} cannot be a fused epilogue; supported: {', '.join(_ENCODERS)}")
    return encoder(op)



COPY, ADD, SUB, MUL, MAX, MIN = 0, 1, 2, 3, 4, 5
#: merge op kind -> how each operand after the first combines into the result.
MERGE_CODES: dict[str, int] = {"add": ADD, "avg": ADD, "sub": SUB, "mul": MUL, "max": MAX, "min": MIN}


def batch_norm_params(weights, names: Sequence[str], epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of inference batch norm, in float64: ``x * s + t``."""
    mean, var, gamma, beta = (np.asarray(weights[n], dtype=np.float64).reshape(-1) for n in names)
    s = gamma / np.sqrt(var + epsilon)
    return s, beta - mean * s
