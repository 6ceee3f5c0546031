"""Interleaving the phases of a transposed convolution whose kernel equals its stride (``emit_convt``).

Such a layer (a U-Net's 2x2 / stride-2 up-convolution) gives every output
pixel exactly one filter tap per axis: it is a 1x1 conv with ``O * KH * KW``
output rows on the undilated input, whose row ``(o, ki, kj)`` lands on output
pixels ``(a * SH + KH - 1 - ki, b * SW + KW - 1 - kj)``. The GEMM writes those
rows into thread scratch (bias and relu already applied: one tap per pixel);
this copies them to their places, along each output row so the stores are
contiguous.
"""

from __future__ import annotations

import numba

from keydnn.backends.numba_cpu.kernels.simd import load_at, store_at
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS

__all__ = ["scatter_phases"]


@numba.njit(**HELPER_JIT_OPTIONS)
def scatter_phases(S, s_off, pitch, y, y_off, O, KH, KW, SH, SW, OH, OW, W, a0, a1):
    """Input rows ``a0..a1`` of every phase row ``r = (o * KH + ki) * KW + kj`` of ``S`` (row pitch ``pitch``,
    column ``(a - a0) * W + b``) to ``y[o, a * SH + KH - 1 - ki, b * SW + KW - 1 - kj]`` (``y`` is O x OH x OW)."""
    for o in range(O):
        for ki in range(KH):
            for a in range(a0, a1):
                dst = y_off + o * OH * OW + (a * SH + KH - 1 - ki) * OW + KW - 1
                src = s_off + (o * KH + ki) * KW * pitch + (a - a0) * W
                for b in range(W):
                    for kj in range(KW):
                        store_at(y, dst + b * SW - kj, load_at(S, src + kj * pitch + b))
