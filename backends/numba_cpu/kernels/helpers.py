"""Serial helpers the generated code calls: flat arrays plus element offsets, one work item each.

Generated code passes every shape, stride and offset as a literal, so these
take only integers and flat arrays (the weight blob ``W``, the float64
parameter blob ``D``, the int64 table blob ``T``, the arena, the graph's input
and output arrays). Parallelism is the caller's (the generated scheduler
hands items to threads); nothing here uses prange. The data-movement and merge
helpers are in ``helpers_move``.
"""

from __future__ import annotations

import logging
import math

import numba
import numpy as np

from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.codegen.codes import GELU_TANH, LINEAR, RELU0, SIGMOID, SWISH, TANH
from keydnn.backends.numba_cpu.kernels.functions import apply_function
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS as JIT_OPTIONS
from keydnn.backends.numba_cpu.kernels.vmath import activate_inplace, softmax_row
from keydnn.backends.numba_cpu.kernels.simd import (
    load_at, store_at, vload, vload_n, vstore, vstore_n, vzero,
)

__all__ = [
    "im2col_panel", "pad_rows", "act_copy", "copy_flat", "copy_rows", "max_pool_planes", "avg_pool_planes", "mean_rows_flat", "max_rows_flat",
    "max_cols_flat", "softmax_flat", "affine_flat", "prelu_flat", "tap_lo", "tap_hi", "conv_direct_planes",
    "add_bias_act_planes",
]

logger = logging.getLogger(__name__)

#: Sums may be reassociated (vectorized); nothing else about floating point changes.
REDUCE_OPTIONS = {**JIT_OPTIONS, "fastmath": {"reassoc"}}


# -- tap ranges of a window over an image (direct convolution, pools) --


@numba.njit(**JIT_OPTIONS)
def tap_lo(offset, stride):
    """First output index whose input index ``i * stride + offset`` is >= 0."""
    return 0 if offset >= 0 else (-offset + stride - 1) // stride


@numba.njit(**JIT_OPTIONS)
def tap_hi(offset, stride, size, n_out):
    """One past the last output index whose input index is < ``size``."""
    last = size - 1 - offset
    return 0 if last < 0 else min(n_out, last // stride + 1)


#: Lanes of the explicit vectors the copy helpers use (LLVM splits them where registers are narrower).
_COPY_LANES = dw_lanes()  # the target's float32 vector


@numba.njit(**JIT_OPTIONS)
def _copy_run(x, src, y, dst, n):
    """y[dst:dst + n] = x[src:src + n] in vectors (x and y may be one array: the runs never overlap)."""
    j = 0
    while j + _COPY_LANES <= n:
        vstore(y, dst + j, vload(x, src + j, _COPY_LANES))
        j += _COPY_LANES
    if j < n:
        vstore_n(y, dst + j, vload_n(x, src + j, n - j, _COPY_LANES), n - j)


@numba.njit(**JIT_OPTIONS)
def _zero_run(y, dst, n):
    z = vzero(y, _COPY_LANES)
    j = 0
    while j + _COPY_LANES <= n:
        vstore(y, dst + j, z)
        j += _COPY_LANES
    if j < n:
        vstore_n(y, dst + j, z, n - j)


@numba.njit(**JIT_OPTIONS)
def im2col_panel(x, x_off, C, H, W, KH, KW, sh, sw, dh, dw, pt, pl, OW, p0, npix, P, p_off, ldp):
    """load_at(P, p_off + k * ldp + j) = load_at(x, c, oy*sh + ki*dh - pt, ox*sw + kj*dw - pl) for output pixel p0 + j
    (k = (c*KH + ki)*KW + kj, zero outside the image), j < npix; one (c, ki, kj) row at a time.

    Small images make this as costly as the GEMM it feeds, so the inner loops are plain copies: which
    output columns read inside the image depends on kj only (computed once per row, no division per
    output row), and each output row's run is split into zeros, pixels, zeros."""
    for c in range(C):
        xc = x_off + c * H * W
        for ki in range(KH):
            for kj in range(KW):
                row = p_off + ((c * KH + ki) * KW + kj) * ldp
                ixb = kj * dw - pl  # input column read by output column 0
                f_lo = 0 if ixb >= 0 else min(OW, (sw - 1 - ixb) // sw)
                f_hi = min(OW, (W - 1 - ixb) // sw + 1) if ixb <= W - 1 else 0
                f_hi = max(f_hi, f_lo)
                oy = p0 // OW
                ox = p0 - oy * OW
                j = 0
                while j < npix:
                    run = min(npix - j, OW - ox)  # pixels left in this output row
                    iy = oy * sh + ki * dh - pt
                    out = row + j
                    if iy < 0 or iy >= H:
                        _zero_run(P, out, run)
                    else:
                        a = min(max(f_lo - ox, 0), run)
                        b = min(max(f_hi - ox, a), run)
                        src = xc + iy * W + ixb + ox * sw
                        if a > 0:
                            _zero_run(P, out, a)
                        if sw == 1:
                            _copy_run(x, src + a, P, out + a, b - a)
                        else:
                            for t in range(a, b):
                                store_at(P, out + t, load_at(x, src + t * sw))
                        if run > b:
                            _zero_run(P, out + b, run - b)
                    j += run
                    ox = 0
                    oy += 1


@numba.njit(**JIT_OPTIONS)
def pad_rows(x, x_off, C, H, W, P, p_off, HP, WP, pt, pl, r_lo, r_hi):
    """Rows [r_lo, r_hi) of every (HP, WP) plane of P at p_off: the (H, W) planes of x placed at
    (pt, pl), zeros around. Other rows of P are left alone (a work item only pads what it reads).
    Explicit vector copies: the scalar loops did not vectorize (x and P may be the same array) and cost
    a tenth of a 3x3 conv's time on a 32x32 image."""
    lo, hi = max(r_lo, 0), min(r_hi, HP)
    if lo >= hi:
        return
    for c in range(C):
        xb = x_off + c * H * W
        pb = p_off + c * HP * WP
        # rows above and below the image, whole
        top = min(hi, pt)
        if lo < top:
            _zero_run(P, pb + lo * WP, (top - lo) * WP)
        bottom = max(lo, pt + H)
        if bottom < hi:
            _zero_run(P, pb + bottom * WP, (hi - bottom) * WP)
        for pr in range(max(lo, pt), min(hi, pt + H)):
            dst = pb + pr * WP
            if pl > 0:
                _zero_run(P, dst, pl)
            _copy_run(x, xb + (pr - pt) * W, P, dst + pl, W)
            if WP > pl + W:
                _zero_run(P, dst + pl + W, WP - pl - W)


@numba.njit(**JIT_OPTIONS)
def act_copy(x, x_off, y, y_off, n, code, p0, p1, p2, p3):
    """load_at(y, y_off:y_off+n) = act(load_at(x, x_off:x_off+n)) (y may be x at the same offset)."""
    if code == LINEAR:
        for i in range(n):
            store_at(y, y_off + i, load_at(x, x_off + i))
    elif code == RELU0:
        for i in range(n):
            v = load_at(x, x_off + i)
            store_at(y, y_off + i, v if v > 0.0 else 0.0)
    elif code == GELU_TANH or code == TANH or code == SIGMOID or code == SWISH:
        if x.ctypes.data + x_off * x.itemsize != y.ctypes.data + y_off * y.itemsize:
            for i in range(n):
                store_at(y, y_off + i, load_at(x, x_off + i))
        # in place on y alone: with x and y overlapping LLVM would fall back to its scalar loop (6x slower)
        which = 0 if code == TANH else 1 if code == SIGMOID else 2 if code == GELU_TANH else 3
        activate_inplace(y, y_off, n, which)
    else:
        for i in range(n):
            store_at(y, y_off + i, apply_function(np.float64(load_at(x, x_off + i)), code, p0, p1, p2, p3))


@numba.njit(**JIT_OPTIONS)
def copy_flat(x, x_off, y, y_off, n):
    for i in range(n):
        store_at(y, y_off + i, load_at(x, x_off + i))


@numba.njit(**JIT_OPTIONS)
def copy_rows(x, x_off, ldx, y, y_off, ldy, rows, n):
    """y[y_off + r * ldy:][:n] = x[x_off + r * ldx:][:n] for r < rows, in vectors: moves a block between
    planes whose pitch makes their rows share an L1 cache set and a compact buffer where they do not."""
    for r in range(rows):
        _copy_run(x, x_off + r * ldx, y, y_off + r * ldy, n)


@numba.njit(**JIT_OPTIONS)
def add_bias_act_planes(y, y_off, planes, size, W, b_off, has_bias, code, p0, p1, p2, p3):
    """For plane o < planes: load_at(y, plane) = act(load_at(y, plane) + bias[o]) in place."""
    for o in range(planes):
        base = y_off + o * size
        if has_bias:
            bv = load_at(W, b_off + o)
            for i in range(size):
                store_at(y, base + i, load_at(y, base + i) + (bv))
        if code != LINEAR:
            act_copy(y, base, y, base, size, code, p0, p1, p2, p3)


@numba.njit(**JIT_OPTIONS)
def _max_pool_2x2(x, x_off, y, y_off, planes, H, W, OH, OW):
    for c in range(planes):
        xb = x_off + c * H * W
        yb = y_off + c * OH * OW
        for i in range(OH):
            r0 = xb + 2 * i * W
            r1 = r0 + W
            row = yb + i * OW
            for j in range(OW):
                m = load_at(x, r0 + 2 * j)
                v = load_at(x, r0 + 2 * j + 1)
                m = v if (v > m) | (v != v) else m
                v = load_at(x, r1 + 2 * j)
                m = v if (v > m) | (v != v) else m
                v = load_at(x, r1 + 2 * j + 1)
                m = v if (v > m) | (v != v) else m
                store_at(y, row + j, m)


@numba.njit(**JIT_OPTIONS)
def max_pool_planes(x, x_off, y, y_off, planes, H, W, OH, OW, KH, KW, sh, sw, pt, pl):
    """Max pooling of ``planes`` consecutive (H, W) planes; padding never wins (NaN propagates)."""
    if KH == 2 and KW == 2 and sh == 2 and sw == 2 and pt == 0 and pl == 0 and 2 * OH <= H and 2 * OW <= W:
        _max_pool_2x2(x, x_off, y, y_off, planes, H, W, OH, OW)
        return
    for c in range(planes):
        xb = x_off + c * H * W
        yb = y_off + c * OH * OW
        for i in range(OH):
            row = yb + i * OW
            for j in range(OW):
                store_at(y, row + j, -np.inf)
            for ki in range(KH):
                ih = i * sh + ki - pt
                if ih < 0 or ih >= H:
                    continue
                src = xb + ih * W
                for kj in range(KW):
                    off = kj - pl
                    j_lo, j_hi = tap_lo(off, sw), tap_hi(off, sw, W, OW)
                    for j in range(j_lo, j_hi):
                        v = load_at(x, src + j * sw + off)
                        d = load_at(y, row + j)
                        store_at(y, row + j, v if (v > d) | (v != v) else d)


@numba.njit(**JIT_OPTIONS)
def avg_pool_planes(x, x_off, y, y_off, planes, H, W, OH, OW, KH, KW, sh, sw, pt, pl):
    """Average pooling; padded positions are not counted."""
    for c in range(planes):
        xb = x_off + c * H * W
        yb = y_off + c * OH * OW
        for i in range(OH):
            row = yb + i * OW
            for j in range(OW):
                store_at(y, row + j, 0.0)
            h0 = i * sh - pt
            rows = min(h0 + KH, H) - max(h0, 0)
            for ki in range(KH):
                ih = h0 + ki
                if ih < 0 or ih >= H:
                    continue
                src = xb + ih * W
                for kj in range(KW):
                    off = kj - pl
                    j_lo, j_hi = tap_lo(off, sw), tap_hi(off, sw, W, OW)
                    for j in range(j_lo, j_hi):
                        store_at(y, row + j, load_at(y, row + j) + (load_at(x, src + j * sw + off)))
            for j in range(OW):
                w0 = j * sw - pl
                store_at(y, row + j, load_at(y, row + j) / (rows * (min(w0 + KW, W) - max(w0, 0))))


@numba.njit(**REDUCE_OPTIONS)
def mean_rows_flat(x, x_off, y, y_off, rows, size):
    """load_at(y, r) = mean of row r of a (rows, size) block, summed in float64 (in any order: vectorized)."""
    for r in range(rows):
        s = 0.0
        base = x_off + r * size
        for k in range(size):
            s += np.float64(load_at(x, base + k))
        store_at(y, y_off + r, s / size)


@numba.njit(**JIT_OPTIONS)
def max_rows_flat(x, x_off, y, y_off, rows, size):
    for r in range(rows):
        base = x_off + r * size
        m = load_at(x, base)
        for k in range(1, size):
            v = load_at(x, base + k)
            m = v if (v > m) | (v != v) else m
        store_at(y, y_off + r, m)


@numba.njit(**JIT_OPTIONS)
def max_cols_flat(x, x_off, y, y_off, size, cols):
    """load_at(y, c) = max over k of load_at(x, k, c) for a (size, cols) block (channels-last global max)."""
    for c in range(cols):
        store_at(y, y_off + c, load_at(x, x_off + c))
    for k in range(1, size):
        base = x_off + k * cols
        for c in range(cols):
            v = load_at(x, base + c)
            d = load_at(y, y_off + c)
            store_at(y, y_off + c, v if (v > d) | (v != v) else d)


@numba.njit(**JIT_OPTIONS)
def softmax_flat(x, x_off, y, y_off, outer, length, inner):
    """Softmax over the middle axis of an (outer, length, inner) block; max-subtracted, float64 sums."""
    if inner == 1:  # rows: exp once per element, vectorized (vmath)
        for o in range(outer):
            softmax_row(x, x_off + o * length, y, y_off + o * length, length)
        return
    for o in range(outer):
        for i in range(inner):
            base = o * length * inner + i
            m = -np.inf
            for k in range(length):
                m = max(m, np.float64(load_at(x, x_off + base + k * inner)))
            s = 0.0
            for k in range(length):
                s += math.exp(np.float64(load_at(x, x_off + base + k * inner)) - m)
            inv = 1.0 / s
            for k in range(length):
                store_at(y, y_off + base + k * inner, math.exp(np.float64(load_at(x, x_off + base + k * inner)) - m) * inv)


@numba.njit(**JIT_OPTIONS)
def affine_flat(x, x_off, y, y_off, outer, period, inner, D, s_off, t_off):
    """y = x * s[c] + t[c] over an (outer, period, inner) block; float64 parameters from ``D``."""
    for o in range(outer):
        for c in range(period):
            s = load_at(D, s_off + c)
            t = load_at(D, t_off + c)
            base = (o * period + c) * inner
            for i in range(inner):
                store_at(y, y_off + base + i, np.float64(load_at(x, x_off + base + i)) * s + t)


@numba.njit(**JIT_OPTIONS)
def prelu_flat(x, x_off, y, y_off, outer, period, inner, D, a_off):
    for o in range(outer):
        for c in range(period):
            a = load_at(D, a_off + c)
            base = (o * period + c) * inner
            for i in range(inner):
                v = np.float64(load_at(x, x_off + base + i))
                store_at(y, y_off + base + i, a * v if v < 0.0 else v)


@numba.njit(**JIT_OPTIONS)
def conv_direct_planes(x, x_off, C, H, W, Wt, w_off, b_off, has_bias, y, y_off, OH, OW, o_lo, o_hi, cg, og,
                       KH, KW, sh, sw, dh, dw, pt, pl):
    """Direct convolution of output channels o_lo..o_hi of one sample (grouped / depthwise filters);
    weights (O, cg, KH, KW) at w_off of Wt, taps clipped to the image (no padding copy)."""
    for o in range(o_lo, o_hi):
        c0 = (o // og) * cg
        plane = y_off + o * OH * OW
        bv = load_at(Wt, b_off + o) if has_bias else 0.0
        for i in range(OH * OW):
            store_at(y, plane + i, bv)
        for ci in range(cg):
            xin = x_off + (c0 + ci) * H * W
            for ki in range(KH):
                off_h = ki * dh - pt
                i_lo, i_hi = tap_lo(off_h, sh), tap_hi(off_h, sh, H, OH)
                for kj in range(KW):
                    off_w = kj * dw - pl
                    j_lo, j_hi = tap_lo(off_w, sw), tap_hi(off_w, sw, W, OW)
                    if j_hi <= j_lo:
                        continue
                    wv = load_at(Wt, w_off + ((o * cg + ci) * KH + ki) * KW + kj)
                    for i in range(i_lo, i_hi):
                        dst = plane + i * OW
                        src = xin + (i * sh + off_h) * W + off_w
                        for j in range(j_lo, j_hi):
                            store_at(y, dst + j, load_at(y, dst + j) + (wv * load_at(x, src + j * sw)))
