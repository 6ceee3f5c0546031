"""Direct conv2d (NCHW) loops: the kernel for depthwise and other thin convolutions.

Padding is never materialized: each filter tap is clipped to the output
rows/columns whose input position lies inside the image. Rows are walked
through slice views so that numba sees unit-stride, non-negative indices and
LLVM vectorizes the inner loop.
"""

from __future__ import annotations

import logging

import numba
from numba import prange

from keydnn.backends.numba_cpu.kernels_elementwise import LINEAR, activate_range
from keydnn.backends.numba_cpu.cg_kernels import tap_hi, tap_lo
from keydnn.backends.numba_cpu.lowering import JIT_OPTIONS, PARALLEL_JIT_OPTIONS

__all__ = ["tap_lo", "tap_hi", "conv_plane", "conv2d_direct"]

logger = logging.getLogger(__name__)


@numba.njit(**JIT_OPTIONS)
def conv_plane(x, w, plane, o, c0, bv, sh, sw, dh, dw, pt, pl):
    """plane = bv + sum over w's input channels (x[c0], x[c0+1], ...) of x[c] (*) w[o, c - c0]."""
    _, h, wd = x.shape
    _, cg, kh, kw = w.shape
    oh, ow = plane.shape
    for i in range(oh):
        prow = plane[i]
        for j in range(ow):
            prow[j] = bv
    for ci in range(cg):
        xin = x[c0 + ci]
        for ki in range(kh):
            off_h = ki * dh - pt
            i_lo, i_hi = tap_lo(off_h, sh), tap_hi(off_h, sh, h, oh)
            for kj in range(kw):
                off_w = kj * dw - pl
                j_lo, j_hi = tap_lo(off_w, sw), tap_hi(off_w, sw, wd, ow)
                if j_hi <= j_lo:
                    continue
                wv = w[o, ci, ki, kj]
                start = j_lo * sw + off_w
                for i in range(i_lo, i_hi):
                    dst = plane[i, j_lo:j_hi]
                    src = xin[i * sh + off_h, start:]
                    if sw == 1:
                        for j in range(dst.size):
                            dst[j] += wv * src[j]
                    else:
                        for j in range(dst.size):
                            dst[j] += wv * src[j * sw]


@numba.njit(**PARALLEL_JIT_OPTIONS)
def conv2d_direct(x, w, b, out, sh, sw, dh, dw, pt, pl, code, p0, p1, p2, p3):
    """One (sample, output channel) plane per task, epilogue applied while the plane is in cache.

    The loops live in a serial helper: numba optimizes those much better than
    code written inside a prange body.
    """
    n_batch, channels = x.shape[0], x.shape[1]
    o_ch, cg = w.shape[0], w.shape[1]
    og = o_ch // (channels // cg)
    for t in prange(n_batch * o_ch):
        n = t // o_ch
        o = t - n * o_ch
        plane = out[n, o]
        conv_plane(x[n], w, plane, o, (o // og) * cg, b[o], sh, sw, dh, dw, pt, pl)
        if code != LINEAR:
            flat = plane.reshape(-1)
            activate_range(flat, flat, 0, flat.size, code, p0, p1, p2, p3)
