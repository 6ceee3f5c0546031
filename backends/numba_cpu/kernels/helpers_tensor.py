"""Serial helpers for the generated code of the tensor-math ops (``cg_emit_tensor``): matmul panels,
layer_norm, reduce, unary, broadcast binary, bias_softmax and resize2d.

Like ``cg_kernels``, each takes flat arrays plus element offsets and the
geometry as integers, and runs one work item; the generated scheduler owns
the parallelism. Reductions accumulate in float64 (the reference's
arithmetic); contiguous loops are left to LLVM's vectorizer (sums may be
reassociated, nothing else about floating point changes).
"""

from __future__ import annotations

import logging
import math

import numba
import numpy as np

from keydnn.backends.numba_cpu.kernels.helpers import REDUCE_OPTIONS
from keydnn.backends.numba_cpu.kernels.functions import apply_binary, apply_function
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS as JIT_OPTIONS
from keydnn.backends.numba_cpu.kernels.simd import load_at, store_at
from keydnn.backends.numba_cpu.kernels.vmath import softmax_row

__all__ = ["pack_panels", "ln_rows", "ln_lanes", "reduce_lanes", "unary_span", "binary_rows", "bias_softmax_rows",
           "resize_rows"]

logger = logging.getLogger(__name__)


@numba.njit(**JIT_OPTIONS)
def unary_scalar(v, code, a, b):
    """One ``unary`` function (its code in ``keydnn.ir.functions.FUNCTION_CODES``) in float64: the shared
    formula of the function table."""
    return apply_function(v, code, a, b, 0.0, 0.0)


@numba.njit(**JIT_OPTIONS)
def binary_scalar(x, y, code):
    """One ``binary`` function (``keydnn.ir.functions.BINARY_CODES``) in float64: the shared formula."""
    return apply_binary(x, y, code)


@numba.njit(**JIT_OPTIONS)
def pack_panels(x, x_off, rs, cs, K, NC, nb, P, p_off, scale):
    """B(k, j) = scale * x[x_off + k * rs + j * cs] (k < K, j < NC) into panels of ``nb`` columns,
    ``P[p_off + (j // nb) * K * nb + k * nb + j % nb]``, zeros past column NC (the dense micro-kernels' B)."""
    panels = (NC + nb - 1) // nb
    for jb in range(panels):
        base = p_off + jb * K * nb
        j0 = jb * nb
        width = min(nb, NC - j0)
        if cs == 1:
            for k in range(K):
                src = x_off + k * rs + j0
                dst = base + k * nb
                for jj in range(width):
                    P[dst + jj] = x[src + jj] * scale
                for jj in range(width, nb):
                    P[dst + jj] = 0.0
        else:
            for k in range(K):
                dst = base + k * nb
                for jj in range(width, nb):
                    P[dst + jj] = 0.0
            for jj in range(width):  # read along k (contiguous for a transposed operand), write strided
                src = x_off + (j0 + jj) * cs
                for k in range(K):
                    P[base + k * nb + jj] = x[src + k * rs] * scale


@numba.njit(**REDUCE_OPTIONS)
def _row_stats(x, o, length, stat):
    s = 0.0
    for k in range(length):
        s += np.float64(load_at(x, o + k))
    mean = s / length
    q = 0.0
    if stat == 0:
        for k in range(length):
            d = np.float64(load_at(x, o + k)) - mean
            q += d * d
        q /= length
    else:
        for k in range(length):
            v = np.float64(load_at(x, o + k))
            q += v * v
        if stat == 1:
            q /= length
    return mean, q


@numba.njit(**REDUCE_OPTIONS)
def ln_rows(x, x_off, y, y_off, r_lo, r_hi, length, D, g_off, b_off, eps, center, stat, eps_max):
    """layer_norm of contiguous rows r_lo..r_hi of ``length`` (the normalized axes are the trailing ones);
    ``y`` may be ``x``. gamma / beta: one float64 per row element in ``D``."""
    for r in range(r_lo, r_hi):
        o = x_off + r * length
        mean, q = _row_stats(x, o, length, stat)
        q = max(q, eps) if eps_max else q + eps
        inv = 1.0 / math.sqrt(q)
        c = mean if center else 0.0
        d = y_off + r * length
        for k in range(length):
            v = (np.float64(load_at(x, o + k)) - c) * inv
            store_at(y, d + k, v * load_at(D, g_off + k) + load_at(D, b_off + k))


@numba.njit(**REDUCE_OPTIONS)
def ln_lanes(x, x_off, y, y_off, T, lb_off, ro_off, t_lo, t_hi, length, D, g_off, b_off, eps, center, stat,
             eps_max):
    """layer_norm of lanes t_lo..t_hi of any axis set: lane t's elements sit at T[lb_off + t] + T[ro_off + k]
    (``reduction_tables``); gamma / beta per reduced element in ``D``."""
    for t in range(t_lo, t_hi):
        b = T[lb_off + t]
        s = 0.0
        for k in range(length):
            s += np.float64(x[x_off + b + T[ro_off + k]])
        mean = s / length
        q = 0.0
        if stat == 0:
            for k in range(length):
                dv = np.float64(x[x_off + b + T[ro_off + k]]) - mean
                q += dv * dv
            q /= length
        else:
            for k in range(length):
                v = np.float64(x[x_off + b + T[ro_off + k]])
                q += v * v
            if stat == 1:
                q /= length
        q = max(q, eps) if eps_max else q + eps
        inv = 1.0 / math.sqrt(q)
        c = mean if center else 0.0
        for k in range(length):
            i = b + T[ro_off + k]
            y[y_off + i] = (np.float64(x[x_off + i]) - c) * inv * D[g_off + k] + D[b_off + k]


@numba.njit(**REDUCE_OPTIONS)
def reduce_lanes(x, x_off, y, y_off, T, lb_off, ro_off, t_lo, t_hi, length, mode):
    """y[y_off + t] = mean (0) / sum (1) / max (2) / min (3) of lane t's elements (tables as ``ln_lanes``;
    ``ro_off`` < 0: the reduced elements are contiguous)."""
    for t in range(t_lo, t_hi):
        b = x_off + T[lb_off + t]
        if mode <= 1:
            s = 0.0
            if ro_off < 0:
                for k in range(length):
                    s += np.float64(x[b + k])
            else:
                for k in range(length):
                    s += np.float64(x[b + T[ro_off + k]])
            y[y_off + t] = s / length if mode == 0 else s
        else:
            m = np.float64(x[b])
            for k in range(1, length):
                v = np.float64(x[b + (k if ro_off < 0 else T[ro_off + k])])
                if (mode == 2 and v > m) or (mode == 3 and v < m) or v != v:
                    m = v
            y[y_off + t] = m


@numba.njit(**JIT_OPTIONS)
def unary_span(x, x_off, y, y_off, n, code, a, b):
    """y[y_off + i] = f(x[x_off + i]) for i < n (``kernels_math.unary_scalar``'s function ``code``)."""
    if code == 4:  # square
        for i in range(n):
            v = x[x_off + i]
            y[y_off + i] = v * v
        return
    if code == 0:  # neg
        for i in range(n):
            y[y_off + i] = -x[x_off + i]
        return
    for i in range(n):
        y[y_off + i] = unary_scalar(np.float64(x[x_off + i]), code, a, b)


@numba.njit(**JIT_OPTIONS)
def _binary_fast(u, v, code):
    if code == 0:
        return u + v
    if code == 1:
        return u - v
    if code == 2:
        return u * v
    return binary_scalar(np.float64(u), np.float64(v), code)


@numba.njit(**JIT_OPTIONS)
def binary_rows(x, x_off, y, y_off, z, z_off, T, dims_off, xs_off, ys_off, rank, r_lo, r_hi, code):
    """Innermost rows r_lo..r_hi of z (C order over the collapsed dims T[dims_off:dims_off + rank]) =
    f(x, y), each operand read through its strides (0 where it is broadcast)."""
    inner = T[dims_off + rank - 1]
    sx = T[xs_off + rank - 1]
    sy = T[ys_off + rank - 1]
    for t in range(r_lo, r_hi):
        rem = t
        ox = x_off
        oy = y_off
        for k in range(rank - 2, -1, -1):
            d = T[dims_off + k]
            i = rem % d
            rem //= d
            ox += i * T[xs_off + k]
            oy += i * T[ys_off + k]
        o = z_off + t * inner
        if code <= 2 and sx == 1 and sy == 1:
            for j in range(inner):
                z[o + j] = _binary_fast(x[ox + j], y[oy + j], code)
        elif code <= 2 and sx == 1 and sy == 0:
            w = y[oy]
            for j in range(inner):
                z[o + j] = _binary_fast(x[ox + j], w, code)
        elif code <= 2 and sx == 0 and sy == 1:
            w = x[ox]
            for j in range(inner):
                z[o + j] = _binary_fast(w, y[oy + j], code)
        else:
            for j in range(inner):
                z[o + j] = binary_scalar(np.float64(x[ox + j * sx]), np.float64(y[oy + j * sy]), code)


@numba.njit(**REDUCE_OPTIONS)
def bias_softmax_rows(x, x_off, y, y_off, r_lo, r_hi, length, b1, b1_off, T, t1_off, s1, b2, b2_off, t2_off, s2,
                      nb):
    """softmax over rows r_lo..r_hi of ``length`` of x + b1 (+ b2): bias row of row r at
    ``b_off + T[t_off + r]``, step ``s`` along the row (0: broadcast). ``y`` may be ``x``."""
    for r in range(r_lo, r_hi):
        o = x_off + r * length
        d = y_off + r * length
        p1 = b1_off + T[t1_off + r]
        p2 = b2_off + T[t2_off + r]
        for k in range(length):
            v = np.float64(load_at(x, o + k)) + np.float64(load_at(b1, p1 + k * s1))
            if nb == 2:
                v += np.float64(load_at(b2, p2 + k * s2))
            store_at(y, d + k, v)
        softmax_row(y, d, y, d, length)


@numba.njit(**JIT_OPTIONS)
def resize_rows(x, x_off, y, y_off, planes, H, W, B, OH, OW, T, ih_off, iw_off, D, wh_off, ww_off, taps, r_lo,
                r_hi):
    """Output rows r_lo..r_hi (of planes * OH) of a separable resize: y[a, oh, ow, c] = sum over taps i, j of
    wh[oh, i] * ww[ow, j] * x[a, ih[oh, i], iw[ow, j], c] (``B`` channels innermost: NHWC has one plane of B
    channels, NCHW planes of one). Tables: 4 source indices and float64 weights per output index."""
    for r in range(r_lo, r_hi):
        a = r // OH
        oh = r - a * OH
        src = x_off + a * H * W * B
        dst = y_off + (a * OH + oh) * OW * B
        for ow in range(OW):
            for c in range(B):
                acc = 0.0
                for i in range(taps):
                    wi = D[wh_off + oh * 4 + i]
                    if wi == 0.0:
                        continue
                    row = src + T[ih_off + oh * 4 + i] * W * B + c
                    part = 0.0
                    for j in range(taps):
                        wj = D[ww_off + ow * 4 + j]
                        if wj != 0.0:
                            part += wj * np.float64(x[row + T[iw_off + ow * 4 + j] * B])
                    acc += wi * part
                y[dst + ow * B + c] = acc
