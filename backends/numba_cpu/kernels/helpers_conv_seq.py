"""Serial helper of the generated code for ``conv_lstm`` (ConvLSTM1D/2D, ``cg_emit_conv_recurrent``): the
recurrence of one batch sample over every time step.

The input convolution of every step is already in ``X`` (the folded ``conv2d``
node before it, run over all ``N * T`` images by the conv emitter). Per step
the recurrent convolution (stride 1, TensorFlow's ``'same'`` padding: the odd
pixel after) is an implicit GEMM: a band of output rows is unfolded into an
im2col panel ``P`` (pixels x ``kh*kw*filters``, zeros where a tap falls
outside the image), ``Z = P @ U`` runs on the dense GEMM micro-kernels that
the recurrence of ``rnn`` uses (``helpers_seq._matmul``: ``U`` packed in
``4L``-column panels), then one pass per pixel adds the step's projection,
applies the gate activations (order i, f, c, o) and updates ``c`` and the
new ``h``. ``h`` is double-buffered: the convolution of a later band reads
the previous step's ``h`` around the band's border, never the new one. Bands
keep the panel in L2 for large images (``band`` output rows at a time).

Semantics are those of the reference (``ir/reference_recurrent.py``), which
the parity tests pin: a masked step keeps ``h`` and ``c``, and its
output is the previous output (or zeros with ``zero_out``); a sequence
output is in processing order (reversed for ``go_backwards``, as Keras).
"""

from __future__ import annotations

import logging

import numba

from keydnn.backends.numba_cpu.codegen.codes import HARD_SIGMOID, HARD_SIGMOID_K2, SIGMOID, TANH
from keydnn.backends.numba_cpu.kernels.helpers_seq import _act_run, _add_to, _copy_to, _fill, _matmul
from keydnn.backends.numba_cpu.kernels.vmath import tanh_rational
from keydnn.backends.numba_cpu.kernels.simd import load_at, store_at
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS as JIT_OPTIONS

__all__ = ["conv_lstm_sample"]

logger = logging.getLogger(__name__)


@numba.njit(**JIT_OPTIONS)
def _al(n):
    return (n + 15) // 16 * 16


#: Gate activations ``_gates_fast`` computes inline (Keras 3's default, and both hard sigmoids: Keras 2's default).
FAST_GATES = (SIGMOID, HARD_SIGMOID, HARD_SIGMOID_K2)


@numba.njit(**JIT_OPTIONS)
def _gates_fast(S, z, X, x, c, h, npx, f, ract, W, k_off):
    """The usual cell (``FAST_GATES`` gates, tanh candidate and output) of ``npx`` pixels in one loop per
    pixel, every activation inline (the rational tanh of ``helpers_seq``): z (pixels x 4f) += the projection
    X[x:], then c and h. The per-gate activation calls of the general path cost a third of a ConvLSTM step;
    a branch on the gate kind inside the loop stops LLVM vectorizing it, so each kind has its own loop."""
    clamp = W[k_off]
    p6, p5, p4, p3, p2, p1, p0 = W[k_off + 1], W[k_off + 2], W[k_off + 3], W[k_off + 4], W[k_off + 5], \
        W[k_off + 6], W[k_off + 7]
    q3, q2, q1, q0 = W[k_off + 8], W[k_off + 9], W[k_off + 10], W[k_off + 11]
    hf = W[k_off + 13]
    slope = 1.0 / 6.0 if ract == HARD_SIGMOID else 0.2
    g = 4 * f
    for px in range(npx):
        zq = z + px * g
        xq = x + px * g
        cq = c + px * f
        hq = h + px * f
        if ract == SIGMOID:
            for j in range(f):
                zi = load_at(S, zq + j) + load_at(X, xq + j)
                zf = load_at(S, zq + f + j) + load_at(X, xq + f + j)
                zc = load_at(S, zq + 2 * f + j) + load_at(X, xq + 2 * f + j)
                zo = load_at(S, zq + 3 * f + j) + load_at(X, xq + 3 * f + j)
                gi = hf * tanh_rational(zi * hf, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0) + hf
                gf = hf * tanh_rational(zf * hf, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0) + hf
                gc = tanh_rational(zc, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0)
                go = hf * tanh_rational(zo * hf, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0) + hf
                cc = gf * load_at(S, cq + j) + gi * gc
                store_at(S, cq + j, cc)
                store_at(S, hq + j, go * tanh_rational(cc, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0))
        else:  # clip(slope * x + 1/2, 0, 1)
            for j in range(f):
                zi = load_at(S, zq + j) + load_at(X, xq + j)
                zf = load_at(S, zq + f + j) + load_at(X, xq + f + j)
                zc = load_at(S, zq + 2 * f + j) + load_at(X, xq + 2 * f + j)
                zo = load_at(S, zq + 3 * f + j) + load_at(X, xq + 3 * f + j)
                gi = min(max(slope * zi + hf, 0.0), 1.0)
                gf = min(max(slope * zf + hf, 0.0), 1.0)
                gc = tanh_rational(zc, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0)
                go = min(max(slope * zo + hf, 0.0), 1.0)
                cc = gf * load_at(S, cq + j) + gi * gc
                store_at(S, cq + j, cc)
                store_at(S, hq + j, go * tanh_rational(cc, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0))


@numba.njit(**JIT_OPTIONS)
def _im2col(S, h, p, oh0, rows, hh, ww, f, kh, kw):
    """S[p:] = the patches of output rows ``oh0 .. oh0 + rows`` over the state at S[h:] ((hh, ww, f))."""
    top = (kh - 1) // 2
    left = (kw - 1) // 2
    width = kh * kw * f
    for r in range(rows):
        oh = oh0 + r
        for ow in range(ww):
            dst = p + (r * ww + ow) * width
            for i in range(kh):
                ih = oh + i - top
                for j in range(kw):
                    iw = ow + j - left
                    d = dst + (i * kw + j) * f
                    if ih < 0 or ih >= hh or iw < 0 or iw >= ww:
                        _fill(S, d, f, 0.0)
                    else:
                        _copy_to(S, d, S, h + (ih * ww + iw) * f, f)


@numba.njit(**JIT_OPTIONS)
def conv_lstm_sample(X, x_off, W, u_off, zb_off, k_off, M, m_off, H0, h0_off, C0, c0_off, Y, y_off, S, s_off,
                     steps, hh, ww, f, kh, kw, band, act, ract, backwards, zero_out, result, ret_seq, has_mask,
                     has_init, precise):
    """One sample's recurrence (see the module docstring).

    The sample's projection is ``X[x_off:]`` as (steps, hh, ww, 4f); its mask ``M[m_off + t]``; initial states
    ``H0[h0_off:]`` / ``C0[c0_off:]`` as (hh, ww, f); output ``Y[y_off:]``, (steps, hh, ww, f) or (hh, ww, f).
    ``U`` (``(kh*kw*f, 4f)``, packed) at ``W[u_off:]``, a zero bias vector at ``W[zb_off:]``, the tanh
    coefficients at ``W[k_off:]``; scratch ``S[s_off:]`` (``cg_emit_conv_recurrent.scratch_elements``: two h
    buffers, c and the last output of ``hh*ww*f`` each, the im2col panel and the gates of one band).
    """
    g = 4 * f
    hw = hh * ww
    size = hw * f
    width = kh * kw * f
    cur = s_off
    nxt = cur + _al(size)
    c = nxt + _al(size)
    prev = c + _al(size)
    p = prev + _al(size)
    z = p + _al(band * ww * width)
    for q in range(size):
        store_at(S, cur + q, load_at(H0, h0_off + q) if has_init else 0.0)
        store_at(S, c + q, load_at(C0, c0_off + q) if has_init else 0.0)
        store_at(S, prev + q, 0.0)
    for k in range(steps):
        t = steps - 1 - k if backwards else k
        if has_mask and M[m_off + t] == 0.0:
            if zero_out:
                _fill(S, prev, size, 0.0)
        else:
            for oh0 in range(0, hh, band):
                rows = min(band, hh - oh0)
                npx = rows * ww
                _im2col(S, cur, p, oh0, rows, hh, ww, f, kh, kw)
                _matmul(S, p, npx, width, W, u_off, g, W, zb_off, S, z, g)
                if act == TANH and not precise and (ract == SIGMOID or ract == HARD_SIGMOID or ract == HARD_SIGMOID_K2):
                    q = oh0 * ww
                    _gates_fast(S, z, X, x_off + (t * hw + q) * g, c + q * f, nxt + q * f, npx, f, ract, W, k_off)
                    continue
                for px in range(npx):
                    q = oh0 * ww + px
                    zq = z + px * g
                    _add_to(S, zq, X, x_off + (t * hw + q) * g, g)
                    _act_run(S, zq, zq + 2 * f, ract, W, k_off, precise)
                    _act_run(S, zq + 2 * f, zq + 3 * f, act, W, k_off, precise)
                    _act_run(S, zq + 3 * f, zq + g, ract, W, k_off, precise)
                    cq = c + q * f
                    hq = nxt + q * f
                    for j in range(f):
                        cc = (load_at(S, zq + f + j) * load_at(S, cq + j)
                              + load_at(S, zq + j) * load_at(S, zq + 2 * f + j))
                        store_at(S, cq + j, cc)
                        store_at(S, hq + j, cc)
                    _act_run(S, hq, hq + f, act, W, k_off, precise)
                    for j in range(f):
                        store_at(S, hq + j, load_at(S, hq + j) * load_at(S, zq + 3 * f + j))
            cur, nxt = nxt, cur
            _copy_to(S, prev, S, cur, size)
        if result == 0 and ret_seq:
            _copy_to(Y, y_off + k * size, S, prev, size)
    if result == 0 and not ret_seq:
        _copy_to(Y, y_off, S, prev, size)
    elif result == 1:
        _copy_to(Y, y_off, S, cur, size)
    elif result == 2:
        _copy_to(Y, y_off, S, c, size)
