"""Activation codes every backend's kernels agree on (the rows of ``keydnn.ir.functions``), and the encoding of a relu/activation op into them.

One table for numba-cpu and numba-cuda: a fused epilogue is ``(code, p0, p1, p2, p3)``
(the code compiled into or branched on by a kernel, the parameters passed to it).
Pure Python, so that generating code and keying caches never import a JIT.
"""

from __future__ import annotations

from typing import Callable, Optional

from keydnn.errors import BackendError
from keydnn.ir.functions import ACTIVATION_NAMES, FUNCTION_CODES
from keydnn.ir.ops.base import OpBase

__all__ = [
    "Encoded", "ACTIVATION_CODES", "NO_EPILOGUE", "encode_activation",
    "LINEAR", "RELU0", "RELU", "SIGMOID", "TANH", "SOFTPLUS", "SOFTSIGN", "ELU", "SELU",
    "GELU", "GELU_TANH", "SWISH", "EXPONENTIAL", "HARD_SIGMOID", "HARD_SIGMOID_K2",
]

#: (code, p0, p1, p2, p3): what a kernel needs to apply one activation.
Encoded = tuple[int, float, float, float, float]

_C = FUNCTION_CODES
LINEAR, RELU0, RELU, SIGMOID, TANH = _C["linear"], _C["relu"], _C["relu_general"], _C["sigmoid"], _C["tanh"]
SOFTPLUS, SOFTSIGN, ELU, SELU, GELU = _C["softplus"], _C["softsign"], _C["elu"], _C["selu"], _C["gelu"]
GELU_TANH, SWISH, EXPONENTIAL = _C["gelu_tanh"], _C["swish"], _C["exponential"]
HARD_SIGMOID, HARD_SIGMOID_K2 = _C["hard_sigmoid"], _C["hard_sigmoid_k2"]

#: Activation function name (the ``activation`` op's functions) -> kernel code (``keydnn.ir.functions``).
ACTIVATION_CODES: dict[str, int] = {name: FUNCTION_CODES[name] for name in ACTIVATION_NAMES}

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
