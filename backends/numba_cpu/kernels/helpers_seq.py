"""Serial helpers of the generated code for the sequence ops (``cg_emit_seq``): the recurrence of a block
of batch rows, embedding gathers, sequence masks.

``rnn_rows`` runs one work item: a block of at most ``gemm_rows`` batch rows
over every time step. The input projection of all steps is already in ``X``
(one GEMM before, the ``dense`` node); per step the recurrent product
``z = rb + h @ U`` runs on the packed GEMM micro-kernels (``ukernels``: the
rows of the block share every load of ``U``, which stays in L1/L2 between
steps), then one pass per row adds the projection, applies the gate
activations and updates the state (``h``, ``c``, the last output and ``z``
live in the thread's scratch: a few KiB, L1-resident). Semantics are the
reference's (``ir/reference.py``), which the parity tests pin to Keras.

Sigmoid and tanh use the float32 helpers' one tanh approximation
(``vmath.tanh_rational``, Eigen's, within a few float32 ulps; ``sigmoid(x) =
(1 + tanh(x/2)) / 2``) in plain arithmetic that LLVM vectorizes: numba's
``exp`` is a scalar libm call without SVML, and the gates of a 128-unit LSTM
take 640 of them per step. Float64 graphs (``precise``) use ``vmath``'s
float64 ``tanh64`` / ``sigmoid64``.

Index inputs (token ids) arrive as raw addresses (``xaddr``) holding int32
(float32 graphs) or int64 (float64 graphs) values in the graph dtype's
storage (``isz`` their item size; ``isz == 0``: the ids are floats of the
graph dtype, truncated toward zero as Keras does). The caller checked the
range; an index outside the table still never reads outside it (its row is
zeros).
"""

from __future__ import annotations

import logging
import math

import numba
import numpy as np

from keydnn.backends.numba_cpu.kernels import ukernels
from keydnn.backends.numba_cpu.codegen.codes import LINEAR, SIGMOID, TANH
from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.kernels.functions import apply_function
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS as JIT_OPTIONS
from keydnn.backends.numba_cpu.kernels.simd import farray, load_at, store_at
from keydnn.backends.numba_cpu.kernels.vmath import TANH_COEFFS, sigmoid64, tanh64, tanh_rational  # noqa: F401
from keydnn.backends.numba_cpu.codegen.target import current_target
from keydnn.backends.numba_cpu.codegen.ukernel_source import kernel_name

__all__ = ["rnn_rows", "embed_rows", "seq_mask_rows", "masking_rows", "repeat_rows", "SEQ_LANES", "SEQ_TILE",
           "TANH_COEFFS"]

logger = logging.getLogger(__name__)

#: Lanes of the micro-kernels the recurrence uses (the target's float32 vector, for every dtype: the emitter
#: packs ``U`` in panels of ``4 * SEQ_LANES`` columns to match) and rows of its two-vector tile.
SEQ_LANES = dw_lanes()
SEQ_TILE = current_target().gemm_rows
_NB = 4 * SEQ_LANES
_L2 = 2 * SEQ_LANES
_MK1 = getattr(ukernels, kernel_name(1, 4, SEQ_LANES))
_MK4 = getattr(ukernels, kernel_name(4, 2, SEQ_LANES))
_MKT = getattr(ukernels, kernel_name(SEQ_TILE, 2, SEQ_LANES))

@numba.njit(**JIT_OPTIONS)
def _tanh_run(a, lo, hi, k, k_off, half):
    """a[lo:hi] = tanh(a) (``half``: sigmoid(a) = (1 + tanh(a / 2)) / 2), by ``vmath.tanh_rational`` with
    the coefficients (``TANH_COEFFS``) the emitter put at ``k[k_off:]``, in the graph's dtype. Two
    branch-free loops over ``load_at``/``store_at`` (numba's negative-index wraparound on a runtime offset
    kept LLVM from vectorizing: 10x slower)."""
    clamp = k[k_off]
    p6, p5, p4, p3, p2, p1, p0 = k[k_off + 1], k[k_off + 2], k[k_off + 3], k[k_off + 4], k[k_off + 5], \
        k[k_off + 6], k[k_off + 7]
    q3, q2, q1, q0 = k[k_off + 8], k[k_off + 9], k[k_off + 10], k[k_off + 11]
    hf = k[k_off + 13]
    if half:
        for j in range(lo, hi):
            t = tanh_rational(load_at(a, j) * hf, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0)
            store_at(a, j, hf * t + hf)
    else:
        for j in range(lo, hi):
            store_at(a, j, tanh_rational(load_at(a, j), clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0))


@numba.njit(**JIT_OPTIONS)
def _act_run(a, lo, hi, code, k, k_off, precise):
    """Cell activation ``code`` over ``a[lo:hi]`` in place."""
    if code == LINEAR:
        return
    if not precise and (code == TANH or code == SIGMOID):
        _tanh_run(a, lo, hi, k, k_off, code == SIGMOID)
    elif code == SIGMOID:
        for j in range(lo, hi):
            store_at(a, j, sigmoid64(load_at(a, j)))
    elif code == TANH:
        for j in range(lo, hi):
            store_at(a, j, tanh64(load_at(a, j)))
    else:
        for j in range(lo, hi):
            store_at(a, j, apply_function(load_at(a, j), code, 1.0, 0.0, 0.0, 0.0))


@numba.njit(**JIT_OPTIONS)
def _add_to(a, a_off, b, b_off, n):
    """a[a_off:][:n] += b[b_off:][:n]."""
    for j in range(n):
        store_at(a, a_off + j, load_at(a, a_off + j) + load_at(b, b_off + j))


@numba.njit(**JIT_OPTIONS)
def _copy_to(a, a_off, b, b_off, n):
    """a[a_off:][:n] = b[b_off:][:n]."""
    for j in range(n):
        store_at(a, a_off + j, load_at(b, b_off + j))


@numba.njit(**JIT_OPTIONS)
def _fill(a, a_off, n, value):
    for j in range(n):
        store_at(a, a_off + j, value)


@numba.njit(**JIT_OPTIONS)
def _matmul(A, a_off, rows, K, B, b_off, cols, bias, bias_off, C, c_off, c_rs):
    """C[r, :cols] = bias + A[r, :K] @ B for r < rows (A row-major, row stride K; B packed in panels of
    ``4L`` columns, ``[panel][k][4L]``), on the dense micro-kernels: tiles of ``SEQ_TILE`` rows share each
    panel load, then 4 rows, then single rows (a GEMV at batch 1)."""
    panels = (cols + _NB - 1) // _NB
    for jb in range(panels):
        col0 = jb * _NB
        nc = min(_NB, cols - col0)
        wp = b_off + jb * K * _NB
        r = 0
        while r + SEQ_TILE <= rows:
            _MKT(K, A, a_off + r * K, K, B, wp, C, c_off + r * c_rs + col0, c_rs, SEQ_TILE, nc, bias,
                 bias_off + col0, 2, 0, 0.0, 0.0, 0.0, 0.0)
            if nc > _L2:
                _MKT(K, A, a_off + r * K, K, B, wp + _L2, C, c_off + r * c_rs + col0 + _L2, c_rs, SEQ_TILE,
                     nc - _L2, bias, bias_off + col0 + _L2, 2, 0, 0.0, 0.0, 0.0, 0.0)
            r += SEQ_TILE
        if r + 4 <= rows:
            _MK4(K, A, a_off + r * K, K, B, wp, C, c_off + r * c_rs + col0, c_rs, 4, nc, bias, bias_off + col0, 2, 0,
                 0.0, 0.0, 0.0, 0.0)
            if nc > _L2:
                _MK4(K, A, a_off + r * K, K, B, wp + _L2, C, c_off + r * c_rs + col0 + _L2, c_rs, 4, nc - _L2, bias,
                     bias_off + col0 + _L2, 2, 0, 0.0, 0.0, 0.0, 0.0)
            r += 4
        while r < rows:
            _MK1(K, A, a_off + r * K, K, B, wp, C, c_off + r * c_rs + col0, c_rs, 1, nc, bias, bias_off + col0, 2, 0,
                 0.0, 0.0, 0.0, 0.0)
            r += 1


@numba.njit(**JIT_OPTIONS)
def rnn_rows(X, x_off, x_ss, W, u_off, u2_off, b_off, b2_off, k_off, M, m_off, m_ss, H0, h0_off, h0_ss, C0, c0_off,
             Y, y_off, y_ss, S, s_off, r0, rows, steps, n, zs, cell, split, act, ract, backwards, restore, zero_out,
             result, ret_seq, has_mask, has_init, precise):
    """The recurrence of batch rows ``r0 .. r0 + rows`` (see the module docstring).

    Sample ``b``'s projection is ``X[x_off + b * x_ss:]`` as (steps, G*n); mask ``M[m_off + b * m_ss + t]``;
    initial states ``H0/C0[.._off + b * h0_ss:]``; output ``Y[y_off + b * y_ss:]`` ((steps, n) or (n,)).
    ``U`` is packed at ``W[u_off:]`` (``split`` GRU: its first 2n columns there, the h block at ``u2_off``),
    the recurrent bias at ``W[b_off:]`` / ``W[b2_off:]``, the tanh coefficients at ``W[k_off:]``. Scratch at
    ``S[s_off:]``: h, c, prev, rh (rows x n each, row stride n) and z (rows x zs).
    """
    g = 4 * n if cell == 1 else (3 * n if cell == 2 else n)
    gm = 2 * n if split else g
    hs = s_off
    cs = hs + rows * n
    ps = cs + rows * n
    rs = ps + rows * n
    zo = rs + rows * n
    for r in range(rows):
        b = r0 + r
        for j in range(n):
            S[hs + r * n + j] = H0[h0_off + b * h0_ss + j] if has_init else 0.0
            S[cs + r * n + j] = C0[c0_off + b * h0_ss + j] if has_init and cell == 1 else 0.0
            S[ps + r * n + j] = 0.0
    for k in range(steps):
        t = steps - 1 - k if backwards else k
        _matmul(S, hs, rows, n, W, u_off, gm, W, b_off, S, zo, zs)
        if split:  # GRU v1: the h block multiplies (r * h)
            for r in range(rows):
                z = zo + r * zs
                _add_to(S, z, X, x_off + (r0 + r) * x_ss + t * g, 2 * n)
                _act_run(S, z, z + 2 * n, ract, W, k_off, precise)
                h = hs + r * n
                rh = rs + r * n
                for j in range(n):
                    store_at(S, rh + j, load_at(S, z + n + j) * load_at(S, h + j))
            _matmul(S, rs, rows, n, W, u2_off, n, W, b2_off, S, zo + 2 * n, zs)
        for r in range(rows):
            b = r0 + r
            p = ps + r * n
            if has_mask and M[m_off + b * m_ss + t] == 0.0:
                if zero_out:
                    _fill(S, p, n, 0.0)
            else:
                z = zo + r * zs
                x = x_off + b * x_ss + t * g
                h = hs + r * n
                if cell == 0:
                    for j in range(n):
                        store_at(S, h + j, load_at(S, z + j) + load_at(X, x + j))
                    _act_run(S, h, h + n, act, W, k_off, precise)
                elif cell == 1:
                    _add_to(S, z, X, x, g)
                    _act_run(S, z, z + 2 * n, ract, W, k_off, precise)
                    _act_run(S, z + 2 * n, z + 3 * n, act, W, k_off, precise)
                    _act_run(S, z + 3 * n, z + g, ract, W, k_off, precise)
                    c = cs + r * n
                    for j in range(n):
                        cc = load_at(S, z + n + j) * load_at(S, c + j) + load_at(S, z + j) * load_at(S, z + 2 * n + j)
                        store_at(S, c + j, cc)
                        store_at(S, h + j, cc)
                    _act_run(S, h, h + n, act, W, k_off, precise)
                    for j in range(n):
                        store_at(S, h + j, load_at(S, h + j) * load_at(S, z + 3 * n + j))
                elif split:
                    _add_to(S, z + 2 * n, X, x + 2 * n, n)
                    _act_run(S, z + 2 * n, z + g, act, W, k_off, precise)
                    for j in range(n):
                        zg = load_at(S, z + j)
                        store_at(S, h + j, zg * load_at(S, h + j) + (1.0 - zg) * load_at(S, z + 2 * n + j))
                else:
                    _add_to(S, z, X, x, 2 * n)
                    _act_run(S, z, z + 2 * n, ract, W, k_off, precise)
                    for j in range(n):
                        store_at(S, z + 2 * n + j, load_at(X, x + 2 * n + j) + load_at(S, z + n + j) * load_at(S, z + 2 * n + j))
                    _act_run(S, z + 2 * n, z + g, act, W, k_off, precise)
                    for j in range(n):
                        zg = load_at(S, z + j)
                        store_at(S, h + j, zg * load_at(S, h + j) + (1.0 - zg) * load_at(S, z + 2 * n + j))
                _copy_to(S, p, S, h, n)
            if result == 0 and ret_seq:
                slot = (steps - 1 - k) if restore else k
                _copy_to(Y, y_off + b * y_ss + slot * n, S, p, n)
    if result == 0 and ret_seq:
        return
    src = ps if result == 0 else (hs if result == 1 else cs)
    for r in range(rows):
        _copy_to(Y, y_off + (r0 + r) * y_ss, S, src + r * n, n)


@numba.njit(**JIT_OPTIONS)
def _index_at(xaddr, isz, Xf, i):
    """Index ``i`` of the ids: int32 / int64 storage at ``xaddr`` (``isz`` 4 or 8), else a float truncated."""
    if isz == 4:
        return np.int64(farray(xaddr, np.int32)[i])
    if isz == 8:
        return farray(xaddr, np.int64)[i]
    v = Xf[i]
    if not (v > -1.0 and v < 9.0e18):  # NaN or out of range: a negative index (rejected below)
        return np.int64(-1)
    return np.int64(math.trunc(v))


@numba.njit(**JIT_OPTIONS)
def embed_rows(xaddr, isz, Xf, x_off, count, T, t_off, vocab, dim, Y, y_off):
    """Y[y_off + i * dim:][:dim] = T[t_off + idx_i * dim:][:dim] for the ``count`` ids from ``x_off`` (zeros
    for an id outside [0, vocab): the caller raised already; this only keeps the read inside the table)."""
    for i in range(count):
        idx = _index_at(xaddr, isz, Xf, x_off + i)
        o = y_off + i * dim
        if idx < 0 or idx >= vocab:
            for j in range(dim):
                Y[o + j] = 0.0
        else:
            s = t_off + idx * dim
            for j in range(dim):
                Y[o + j] = T[s + j]


@numba.njit(**JIT_OPTIONS)
def seq_mask_rows(xaddr, isz, Xf, x_off, steps, feats, value, Y, y_off):
    """Y[y_off + t] = 1 where step t is real: its id (``feats == 0``) or any of its ``feats`` features
    differs from ``value``, else 0."""
    for t in range(steps):
        keep = False
        if feats == 0:
            keep = _index_at(xaddr, isz, Xf, x_off + t) != value if isz else Xf[x_off + t] != value
        else:
            for f in range(feats):
                if Xf[x_off + t * feats + f] != value:
                    keep = True
                    break
        Y[y_off + t] = 1.0 if keep else 0.0


@numba.njit(**JIT_OPTIONS)
def masking_rows(X, x_off, steps, feats, value, Y, y_off):
    """Keras Masking: a step whose features all equal ``value`` becomes zeros, the others are copied."""
    for t in range(steps):
        keep = False
        for f in range(feats):
            if X[x_off + t * feats + f] != value:
                keep = True
                break
        for f in range(feats):
            Y[y_off + t * feats + f] = X[x_off + t * feats + f] if keep else 0.0


@numba.njit(**JIT_OPTIONS)
def repeat_rows(X, x_off, feats, times, Y, y_off):
    """Y[y_off:] = ``times`` copies of X[x_off:][:feats]."""
    for k in range(times):
        for f in range(feats):
            Y[y_off + k * feats + f] = X[x_off + f]
