"""What the kinds in ``modes.PER_OP_ONLY`` still need on the per-op path, until they get code generators.

``fold_time`` and ``unfold_time`` are views (the per-op executor reshapes them; no kernel). ``conv_lstm``
runs its per-op kernel (``kernels_conv_recurrent``), which needs the cell helpers below. When those kinds
have emitters, this module and ``kernels_conv_recurrent`` go.
"""

from __future__ import annotations

import logging

import numba
import numpy as np

from keydnn.backends.numba_cpu.codegen.codes import ACTIVATION_CODES, LINEAR, RELU0, SIGMOID, TANH
from keydnn.backends.numba_cpu.kernels.functions import apply_function
from keydnn.backends.numba_cpu.ops.lowering import JIT_OPTIONS

__all__ = ["RESULTS", "cell_code", "apply_range", "load"]

logger = logging.getLogger(__name__)

#: result -> kernel code.
RESULTS = {"output": 0, "state_h": 1, "state_c": 2}


def cell_code(name: str) -> int:
    """Activation code of a cell activation name (``relu`` is plain max(x, 0))."""
    return RELU0 if name == "relu" else ACTIVATION_CODES[name]


@numba.njit(**JIT_OPTIONS)
def apply_range(a, lo, hi, code):
    """Activation ``code`` over ``a[lo:hi]`` in place. Sigmoid and tanh (the usual gates) are tight loops
    over ``exp`` in the array's dtype, which LLVM vectorizes (libm's scalar ``tanh`` is ten times slower);
    tanh is ``1 - 2 / (exp(2x) + 1)`` (exact at the limits, within 1e-7 absolute of tanh)."""
    if code == SIGMOID:
        for j in range(lo, hi):
            a[j] = 1.0 / (1.0 + np.exp(-a[j]))
    elif code == TANH:
        for j in range(lo, hi):
            a[j] = 1.0 - 2.0 / (np.exp(a[j] + a[j]) + 1.0)
    elif code != LINEAR:
        for j in range(lo, hi):
            a[j] = apply_function(a[j], code, 1.0, 0.0, 0.0, 0.0)


def load() -> None:
    """Register the per-op-only kernels in ``lowering.KERNELS``."""
    from keydnn.backends.numba_cpu.ops import kernels_conv_recurrent  # noqa: F401
