"""im2col conv2d (NCHW): unfold the input, then one matrix product per group.

Two kernels share the unfolding and operand layout (x as (N, G, Cg, H, W),
weights as (G, Og, Cg*KH*KW), output as (N, G, Og, OH*OW)):

* ``conv2d_im2col`` multiplies with numba loops on numba's threads; the
  default for every filter that mixes channels.
* ``conv2d_blas`` hands one large product per group and chunk of samples to
  BLAS, which parallelizes it itself, then scatters to NCHW with bias and
  epilogue. BLAS is only ever called outside prange: BLAS threads nested in
  numba's threads fight over the cores and ran several times slower.

A 1x1 stride-1 unpadded convolution skips the unfolding (the input already is
the matrix).
"""

from __future__ import annotations

import logging

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.kernels.helpers import tap_hi, tap_lo
from keydnn.backends.numba_cpu.ops.kernels_elementwise import LINEAR, activate_range
from keydnn.backends.numba_cpu.ops.lowering import JIT_OPTIONS, PARALLEL_JIT_OPTIONS

__all__ = ["im2col_channel", "conv2d_blas", "conv2d_im2col", "gemm_chunk", "blas_scratch", "im2col_scratch", "COLS_BUDGET"]

logger = logging.getLogger(__name__)

#: Upper bound, in elements, of the unfolded matrix of one chunk of samples.
COLS_BUDGET = 1 << 22


@numba.njit(**JIT_OPTIONS)
def im2col_channel(xc, cols, r0, c0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow):
    """cols[r0 + ki*kw + kj, c0 + i*ow + j] = x[i*sh + ki*dh - pt, j*sw + kj*dw - pl], zero outside."""
    h, wd = xc.shape
    for ki in range(kh):
        off_h = ki * dh - pt
        for kj in range(kw):
            off_w = kj * dw - pl
            j_lo, j_hi = tap_lo(off_w, sw), tap_hi(off_w, sw, wd, ow)
            j_hi = max(j_hi, j_lo)
            row = cols[r0 + ki * kw + kj, c0: c0 + oh * ow]
            for i in range(oh):
                dst = row[i * ow: (i + 1) * ow]
                ih = i * sh + off_h
                if ih < 0 or ih >= h or j_lo >= ow:
                    for j in range(ow):
                        dst[j] = 0.0
                    continue
                for j in range(j_lo):
                    dst[j] = 0.0
                src = xc[ih, j_lo * sw + off_w:]
                mid = dst[j_lo:j_hi]
                if sw == 1:
                    for j in range(mid.size):
                        mid[j] = src[j]
                else:
                    for j in range(mid.size):
                        mid[j] = src[j * sw]
                for j in range(j_hi, ow):
                    dst[j] = 0.0


@numba.njit(**JIT_OPTIONS)
def gemm_chunk(n_batch, depth, p):
    """Samples unfolded at once: as many as fit in COLS_BUDGET, at least one."""
    return max(1, min(n_batch, COLS_BUDGET // max(1, depth * p)))


def blas_scratch(n_batch: int, groups: int, depth: int, og: int, p: int) -> int:
    """Flat scratch conv2d_blas needs: one chunk's unfolded matrix and GEMM result."""
    return (depth + og) * gemm_chunk(n_batch, depth, p) * p


def im2col_scratch(n_batch: int, groups: int, depth: int, og: int, p: int) -> int:
    """Flat scratch conv2d_im2col needs: one chunk's unfolded matrices, every group."""
    return groups * depth * gemm_chunk(n_batch, groups * depth, p) * p


@numba.njit(**JIT_OPTIONS)
def bias_act_copy(src, dst, bv, code, p0, p1, p2, p3):
    """dst = act(src + bv) on 1-D rows; ``dst`` may be ``src``."""
    for j in range(dst.size):
        dst[j] = src[j] + bv
    if code != LINEAR:
        activate_range(dst, dst, 0, dst.size, code, p0, p1, p2, p3)


@numba.njit(**JIT_OPTIONS)
def conv2d_blas(x, wmat, b, out, scratch, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, code, p0, p1, p2, p3):
    """x (N, G, Cg, H, W), wmat (G, Og, Cg*KH*KW), out (N, G, Og, OH*OW); ``scratch`` is flat and
    holds the unfolded matrix then the GEMM result of one chunk of samples."""
    n_batch, groups, cg, h, wd = x.shape
    og, depth = wmat.shape[1], wmat.shape[2]
    p = oh * ow
    kk = kh * kw
    pointwise = kk == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and oh == h and ow == wd
    chunk = gemm_chunk(n_batch, depth, p)
    for g in range(groups):
        for n0 in range(0, n_batch, chunk):
            nc = min(chunk, n_batch - n0)
            m = nc * p
            if pointwise and nc == 1:
                cols = x[n0, g].reshape(cg, p)
            else:
                cols = scratch[: depth * m].reshape(depth, m)
                for t in range(nc * cg):
                    n = t // cg
                    c = t - n * cg
                    im2col_channel(x[n0 + n, g, c], cols, c * kk, n * p, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
            if nc == 1:  # GEMM straight into the output, then bias and epilogue in place
                res = out[n0, g]
                np.dot(wmat[g], cols, res)
                for o in range(og):
                    bias_act_copy(res[o], res[o], b[g * og + o], code, p0, p1, p2, p3)
            else:
                tmp = scratch[depth * m: (depth + og) * m].reshape(og, m)
                np.dot(wmat[g], cols, tmp)
                for t in range(nc * og):
                    n = t // og
                    o = t - n * og
                    bias_act_copy(tmp[o, n * p: (n + 1) * p], out[n0 + n, g, o], b[g * og + o],
                                  code, p0, p1, p2, p3)


_TILE = 512  # output columns per pass: four accumulator rows of this stay in L1
_OBLOCK = 8  # output rows per task


@numba.njit(**JIT_OPTIONS)
def matmul_rows(wg, cols, res, o_lo, o_hi, b, b0, code, p0, p1, p2, p3):
    """res[o] = act(b[b0 + o] + wg[o] @ cols) for o in [o_lo, o_hi); four rows share each cols load."""
    depth, p = cols.shape
    for o in range(o_lo, o_hi):
        r = res[o]
        bv = b[b0 + o]
        for j in range(p):
            r[j] = bv
    for j0 in range(0, p, _TILE):
        j1 = min(p, j0 + _TILE)
        o = o_lo
        while o + 4 <= o_hi:
            r0, r1, r2, r3 = res[o, j0:j1], res[o + 1, j0:j1], res[o + 2, j0:j1], res[o + 3, j0:j1]
            for k in range(depth):
                c = cols[k, j0:j1]
                w0, w1, w2, w3 = wg[o, k], wg[o + 1, k], wg[o + 2, k], wg[o + 3, k]
                for j in range(c.size):
                    cj = c[j]
                    r0[j] += w0 * cj
                    r1[j] += w1 * cj
                    r2[j] += w2 * cj
                    r3[j] += w3 * cj
            o += 4
        while o < o_hi:
            r = res[o, j0:j1]
            for k in range(depth):
                c = cols[k, j0:j1]
                wv = wg[o, k]
                for j in range(c.size):
                    r[j] += wv * c[j]
            o += 1
    if code != LINEAR:
        for o in range(o_lo, o_hi):
            r = res[o]
            activate_range(r, r, 0, p, code, p0, p1, p2, p3)


@numba.njit(**PARALLEL_JIT_OPTIONS)
def conv2d_im2col(x, wmat, b, out, scratch, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow, code, p0, p1, p2, p3):
    """Same operands as conv2d_blas, all on numba's threads: unfold (sample, channel) planes in
    parallel, then (sample, group, block of output rows) tasks multiply in parallel."""
    n_batch, groups, cg, h, wd = x.shape
    og, depth = wmat.shape[1], wmat.shape[2]
    p = oh * ow
    kk = kh * kw
    pointwise = kk == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and oh == h and ow == wd
    chunk = gemm_chunk(n_batch, groups * depth, p)
    blocks = (og + _OBLOCK - 1) // _OBLOCK
    for n0 in range(0, n_batch, chunk):
        nc = min(chunk, n_batch - n0)
        cols_all = scratch[: nc * groups * depth * p].reshape(nc, groups, depth, p)
        if not pointwise:
            for t in prange(nc * groups * cg):
                n = t // (groups * cg)
                g = (t // cg) % groups
                c = t % cg
                im2col_channel(x[n0 + n, g, c], cols_all[n, g], c * kk, 0, kh, kw, sh, sw, dh, dw, pt, pl, oh, ow)
        for t in prange(nc * groups * blocks):
            n = t // (groups * blocks)
            g = (t // blocks) % groups
            blk = t % blocks
            cols = x[n0 + n, g].reshape(cg, p) if pointwise else cols_all[n, g]
            matmul_rows(wmat[g], cols, out[n0 + n, g], blk * _OBLOCK, min(og, (blk + 1) * _OBLOCK), b, g * og,
                        code, p0, p1, p2, p3)
