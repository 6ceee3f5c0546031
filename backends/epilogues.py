"""Activation codes every backend's kernels agree on, and the encoding of a relu/activation op into them.

One table for numba-cpu and numba-cuda: a fused epilogue is ``(code, p0, p1, p2, p3)``
(the code compiled into or branched on by a kernel, the parameters passed to it).
Pure Python, so that generating code and keying caches never import a JIT.
"""

from __future__ import annotations

from typing import Callable, Optional

from keydnn.errors import BackendError
from keydnn.ir.ops.base import OpBase

__all__ = [
    "Encoded", "ACTIVATION_CODES", "NO_EPILOGUE", "encode_activation",
    "LINEAR", "RELU0", "RELU", "SIGMOID", "TANH", "SOFTPLUS", "SOFTSIGN", "ELU", "SELU",
    "GELU", "GELU_TANH", "SWISH", "EXPONENTIAL", "HARD_SIGMOID", "HARD_SIGMOID_K2",
]

#: (code, p0, p1, p2, p3): what a kernel needs to apply one activation.
Encoded = tuple[int, float, float, float, float]

LINEAR, RELU0, RELU, SIGMOID, TANH, SOFTPLUS, SOFTSIGN, ELU, SELU = 0, 1, 2, 3, 4, 5, 6, 7, 8
GELU, GELU_TANH, SWISH, EXPONENTIAL, HARD_SIGMOID, HARD_SIGMOID_K2 = 9, 10, 11, 12, 13, 14

#: Activation function name (ir.ops.ACTIVATION_FUNCTIONS) -> kernel code.
ACTIVATION_CODES: dict[str, int] = {
    "linear": LINEAR, "sigmoid": SIGMOID, "tanh": TANH, "softplus": SOFTPLUS, "softsign": SOFTSIGN,
    "elu": ELU, "selu": SELU, "gelu": GELU, "gelu_tanh": GELU_TANH, "swish": SWISH,
    "exponential": EXPONENTIAL, "hard_sigmoid": HARD_SIGMOID, "hard_sigmoid_k2": HARD_SIGMOID_K2,
}

NO_EPILOGUE: Encoded = (LINEAR, 0.0, 0.0, 0.0, 0.0)


def _encode_relu(op: OpBase, unsupported: type[BackendError], backend: str) -> Encoded:
    if op.max_value is None and op.negative_slope == 0.0 and op.threshold == 0.0:
        return (RELU0, 0.0, 0.0, 0.0, 0.0)
    has_max = op.max_value is not None
    return (RELU, float(op.threshold), float(op.max_value or 0.0), 1.0 if has_max else 0.0,
            float(op.negative_slope))


def _encode_function(op: OpBase, unsupported: type[BackendError], backend: str) -> Encoded:
    code = ACTIVATION_CODES.get(op.function)
    if code is None:
        raise unsupported(f"activation function {op.function!r} has no {backend} kernel; "
                          f"supported: {', '.join(sorted(ACTIVATION_CODES))}")
    return (code, float(op.alpha), 0.0, 0.0, 0.0)


_ENCODERS: dict[str, Callable[[OpBase, type[BackendError], str], Encoded]] = {
    "relu": _encode_relu, "activation": _encode_function,
}


def encode_activation(op: Optional[OpBase], unsupported: type[BackendError], backend: str) -> Encoded:
    """Encode a relu/activation op (standalone or a fused epilogue); None is the identity.

    ``unsupported`` is the calling backend's error for what it cannot run (each backend's lowering
    catches its own), ``backend`` its name for the message.
    """
    if op is None:
        return NO_EPILOGUE
    encoder = _ENCODERS.get(op.kind)
    if encoder is None:
        raise unsupported(f"{op.kind} cannot be a fused epilogue; supported: {', '.join(_ENCODERS)}")
    return encoder(op, unsupported, backend)
