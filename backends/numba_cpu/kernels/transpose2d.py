"""Transposes of a matrix (``y = x.T``) for the generated code: what a model's boundary layout transposes are.

A channels_last model's input becomes channels-first (``(H*W, C) -> (C, H*W)``)
and a channels-first result goes back (``(C, H*W) -> (H*W, C)``): a rotation
of the sample axes, i.e. a 2-D transpose. The general ``transpose_flat``
walks innermost rows of the result and recomputes each row's source with a
division per axis: with 2 channels last, a U-Net's 64x64 output was 4096
rows of two elements and took 41 us at batch 1, the whole rest of the model
800 us. Here the inner loop runs along whichever side is long (contiguous
stores when the result's rows are long, contiguous loads when the source's
are), and tiles of 8 x 64 where both are: 1.4 us for that output.
"""

from __future__ import annotations

import numba

from keydnn.backends.numba_cpu.kernels.simd import load_at, store_at
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS

__all__ = ["transpose_matrix", "SHORT"]

#: A side at most this long is walked in the outer loop.
SHORT = 16


@numba.njit(**HELPER_JIT_OPTIONS)
def transpose_matrix(x, x_off, y, y_off, R, C, lo, hi):
    """Rows ``lo..hi`` of ``y`` (``C x R``, C order) = columns ``lo..hi`` of ``x`` (``R x C``, C order)."""
    if C <= SHORT or R > SHORT and hi - lo <= SHORT:  # long result rows: contiguous stores
        for c in range(lo, hi):
            for r in range(R):
                store_at(y, y_off + c * R + r, load_at(x, x_off + r * C + c))
    elif R <= SHORT:  # long source rows: contiguous loads
        for r in range(R):
            for c in range(lo, hi):
                store_at(y, y_off + c * R + r, load_at(x, x_off + r * C + c))
    else:
        for c0 in range(lo, hi, 8):
            c1 = min(hi, c0 + 8)
            for r0 in range(0, R, 64):
                r1 = min(R, r0 + 64)
                for c in range(c0, c1):
                    for r in range(r0, r1):
                        store_at(y, y_off + c * R + r, load_at(x, x_off + r * C + c))
