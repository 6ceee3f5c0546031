"""Phase-split zero padding, and the general depthwise conv2d helper of the generated code.

A depthwise filter does a few multiply-adds per output (9 for 3x3), so it
is bound by loads, not arithmetic; the direct scalar loops it replaced ran
at about a quarter of ONNX Runtime's speed. Here each input plane is copied
once, zero-padded, into thread-private scratch with its columns split into
``sw`` phases (column ``c`` of a padded row at ``(c % sw) * WQ + c // sw``), so
that for any horizontal stride the inputs of ``L`` consecutive outputs of a
tap are one contiguous vector. Each output vector is then ``KH * KW`` fused
multiply-adds of a broadcast weight and a vector load, with bias and a relu
in the store. Strided groups-1 convs with outputs along rows read the same
layout (``pad_rows_phased``), so a stride-2 stem runs as implicit GEMM.
"""

from __future__ import annotations

import numba

from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.kernels.helpers import _copy_run, _zero_run
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS
from keydnn.backends.numba_cpu.kernels.simd import (
    load_at, store_at, vbroadcast, veven, vfma, vload, vmax_zero, vodd, vrelu_general, vsplat, vstore, vstore_n,
    vzero,
)

__all__ = ["dw_conv_planes", "pad_plane_phased", "pad_rows_phased", "DW_LANES"]

#: Outputs per vector (the target's float32 vector; the emitter sizes scratch with the same number).
DW_LANES = dw_lanes()


@numba.njit(**HELPER_JIT_OPTIONS, inline="always")
def _phase_row(x, src, W, P, row, WQ, sw, pl, p0, q0):
    """Input row x[src:src + W] into the phase-split padded row at P[row:] (input column 0 at padded column pl,
    which is phase p0 = pl % sw, index q0 = pl // sw): padded column c at row + (c % sw) * WQ + c // sw. The
    padding around it is not written."""
    if sw == 1:
        _copy_run(x, src, P, row + pl, W)
        return
    ix = 0
    if sw == 2:  # the common stride: whole vectors split into even and odd columns by shuffles
        even = row + p0 * WQ + q0  # input column 2j lands at even + j, column 2j + 1 at odd + j
        odd = row + (1 - p0) * WQ + (pl + 1) // 2
        while ix + 2 * DW_LANES <= W:
            a = vload(x, src + ix, DW_LANES)
            b = vload(x, src + ix + DW_LANES, DW_LANES)
            vstore(P, even + ix // 2, veven(a, b))
            vstore(P, odd + ix // 2, vodd(a, b))
            ix += 2 * DW_LANES
    if ix == W:
        return
    phase, q = (p0 + ix) % sw, q0 + (p0 + ix) // sw
    for ix in range(ix, W):
        store_at(P, row + phase * WQ + q, load_at(x, src + ix))
        phase += 1
        if phase == sw:
            phase = 0
            q += 1


@numba.njit(**HELPER_JIT_OPTIONS, inline="always")  # callers pass a literal sw: no division per row then
def pad_plane_phased(x, src, H, W, P, dst, HP, WQ, sw, pt, pl, clear):
    """The (H, W) plane at x[src:] zero-padded into P[dst:] as HP rows of ``sw`` phases of WQ elements:
    padded column c of row r at dst + r * sw * WQ + (c % sw) * WQ + c // sw (input at row pt, column pl).
    The border is zeroed only when ``clear``: the copy never writes it, so a plane of the same geometry
    padded into the same place before left it zero."""
    pitch = sw * WQ
    if clear:
        _zero_run(P, dst, HP * pitch)
    p0, q0 = pl % sw, pl // sw
    for iy in range(H):
        _phase_row(x, src + iy * W, W, P, dst + (iy + pt) * pitch, WQ, sw, pl, p0, q0)


@numba.njit(**HELPER_JIT_OPTIONS)
def pad_rows_phased(x, x_off, C, H, W, P, p_off, HP, WQ, sw, pt, pl, r_lo, r_hi):
    """Rows [r_lo, r_hi) of every plane of C padded planes at P[p_off:] (HP rows of ``sw`` phases of WQ
    elements, as ``pad_plane_phased``), zeros around the image: ``cg_kernels.pad_rows`` for a strided conv
    whose output rows are vectors (each phase holds the columns one horizontal stride apart)."""
    lo, hi = max(r_lo, 0), min(r_hi, HP)
    pitch = sw * WQ
    p0, q0 = pl % sw, pl // sw
    for c in range(C):
        pb = p_off + c * HP * pitch
        for r in range(lo, hi):
            _zero_run(P, pb + r * pitch, pitch)
            if pt <= r < pt + H:
                _phase_row(x, x_off + (c * H + r - pt) * W, W, P, pb + r * pitch, WQ, sw, pl, p0, q0)


@numba.njit(**HELPER_JIT_OPTIONS)
def dw_conv_planes(x, x_off, H, W, Wt, w_off, b_off, has_bias, y, y_off, OH, OW, o_lo, o_hi, og, KH, KW, sh, sw,
                   dh, dw, pt, pl, P, p_off, HP, WQ, act, p0, p1, p2, p3):
    """Output channels o_lo..o_hi of one sample of a depthwise conv2d (filter o reads input channel o // og;
    weights (O, 1, KH, KW) at w_off of Wt, bias at b_off). ``P[p_off:]`` is scratch for one padded plane
    (HP * sw * WQ + DW_LANES elements). ``act`` 1 relu, 2 Keras relu (p0..p3), else none: the caller applies
    other activations after."""
    pitch = sw * WQ
    dp = dw % sw  # a tap step of dw columns: dp phases and dw // sw indices on
    step = dp * WQ + dw // sw
    z = vzero(y, DW_LANES)
    last = -1
    for o in range(o_lo, o_hi):
        c = o // og
        if c != last:
            pad_plane_phased(x, x_off + c * H * W, H, W, P, p_off, HP, WQ, sw, pt, pl, last == -1)
            last = c
        bias = vsplat(load_at(Wt, b_off + o) if has_bias else 0.0, z)
        wb = w_off + o * KH * KW
        plane = y_off + o * OH * OW
        for i in range(OH):
            for j0 in range(0, OW, DW_LANES):
                acc = bias
                for ki in range(KH):
                    row = p_off + (i * sh + ki * dh) * pitch + j0
                    at = row  # tap (ki, kj) reads phase (kj * dw) % sw at index (kj * dw) // sw, stepped
                    phase = 0
                    for kj in range(KW):
                        acc = vfma(vbroadcast(Wt, wb + ki * KW + kj, z), vload(P, at, DW_LANES), acc)
                        at += step
                        phase += dp
                        if phase >= sw:
                            phase -= sw
                            at += 1 - sw * WQ
                if act == 1:
                    acc = vmax_zero(acc)
                elif act == 2:
                    acc = vrelu_general(acc, p0, p1, p2, p3)
                n = min(DW_LANES, OW - j0)
                if n == DW_LANES:
                    vstore(y, plane + i * OW + j0, acc)
                else:
                    vstore_n(y, plane + i * OW + j0, acc, n)
