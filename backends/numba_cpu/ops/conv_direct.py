"""Direct conv2d (NCHW) in the per-op mode: the kernel for depthwise and other thin convolutions.

Padding is never materialized: each filter tap is clipped to the output
rows/columns whose input position lies inside the image. The loops are the
generated code's ``cg_kernels.conv_direct_planes`` (one implementation).
"""

from __future__ import annotations

import logging

import numba
from numba import prange

from keydnn.backends.numba_cpu.ops.kernels_elementwise import LINEAR, activate_range
from keydnn.backends.numba_cpu.kernels.helpers import conv_direct_planes
from keydnn.backends.numba_cpu.ops.lowering import PARALLEL_JIT_OPTIONS

__all__ = ["conv2d_direct"]

logger = logging.getLogger(__name__)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def conv2d_direct(x, wb, out, n_batch, channels, h, w, o_ch, cg, kh, kw, oh, ow, sh, sw, dh, dw, pt, pl,
                  code, p0, p1, p2, p3):
    """Flat NCHW ``x`` -> ``out``: one (sample, output channel) plane per task through the generated code's
    ``conv_direct_planes`` (weights then biases in ``wb``), epilogue applied while the plane is in cache."""
    og = o_ch // (channels // cg)
    b_off = o_ch * cg * kh * kw
    for t in prange(n_batch * o_ch):
        n = t // o_ch
        o = t - n * o_ch
        conv_direct_planes(x, n * channels * h * w, channels, h, w, wb, 0, b_off, True, out, n * o_ch * oh * ow,
                           oh, ow, o, o + 1, cg, og, kh, kw, sh, sw, dh, dw, pt, pl)
        if code != LINEAR:
            base = (n * o_ch + o) * oh * ow
            activate_range(out, out, base, base + oh * ow, code, p0, p1, p2, p3)
