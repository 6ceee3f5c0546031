"""numba-cpu kernel of ``conv_lstm`` (ConvLSTM1D/2D): the recurrence, with a stride-1 'same' convolution of h
in place of the matrix product. The input convolution of all steps is the ``conv2d`` node before it.

Batch rows run on separate threads (``prange``); per row, h, c and the gate
pre-activations of one step are small arrays, the convolution accumulates
whole 4*filters gate vectors per tap (a contiguous inner loop), and the gate
activations run per gate block (``per_op_only.apply_range``). Shapes are read
at call time: one compiled kernel for every length.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.ops.per_op_only import RESULTS, cell_code
from keydnn.backends.numba_cpu.ops.per_op_only import apply_range as _apply
from keydnn.backends.numba_cpu.ops.lowering import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel

__all__ = ["conv_lstm_kernel"]

logger = logging.getLogger(__name__)


@numba.njit(**JIT_OPTIONS)
def _row(xp, rk, mask, h0, c0, out, b, act, ract, backwards, zero_out, result, ret_seq, has_mask, has_init):
    steps, hh, ww, g = xp.shape[1], xp.shape[2], xp.shape[3], xp.shape[4]
    kh, kw, f = rk.shape[0], rk.shape[1], rk.shape[2]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    h = np.zeros((hh, ww, f), dtype=xp.dtype)
    c = np.zeros((hh, ww, f), dtype=xp.dtype)
    prev = np.zeros((hh, ww, f), dtype=xp.dtype)
    z = np.empty((hh, ww, g), dtype=xp.dtype)
    if has_init:
        h[:] = h0[b]
        c[:] = c0[b]
    for k in range(steps):
        t = steps - 1 - k if backwards else k
        if (not has_mask) or mask[b, t] != 0.0:
            for oh in range(hh):
                for ow in range(ww):
                    zp = z[oh, ow]
                    xq = xp[b, t, oh, ow]
                    for q in range(g):
                        zp[q] = xq[q]
                    for i in range(kh):
                        ih = oh + i - top
                        if ih < 0 or ih >= hh:
                            continue
                        for j in range(kw):
                            iw = ow + j - left
                            if iw < 0 or iw >= ww:
                                continue
                            for ci in range(f):
                                hv = h[ih, iw, ci]
                                wr = rk[i, j, ci]
                                for q in range(g):
                                    zp[q] += hv * wr[q]
            for oh in range(hh):
                for ow in range(ww):
                    zp = z[oh, ow]
                    _apply(zp, 0, 2 * f, ract)
                    _apply(zp, 2 * f, 3 * f, act)
                    _apply(zp, 3 * f, g, ract)
                    cp = c[oh, ow]
                    for q in range(f):
                        cp[q] = zp[f + q] * cp[q] + zp[q] * zp[2 * f + q]
                    hp = h[oh, ow]
                    for q in range(f):
                        hp[q] = cp[q]
                    _apply(hp, 0, f, act)
                    for q in range(f):
                        hp[q] *= zp[3 * f + q]
            prev[:] = h
        elif zero_out:
            prev[:] = 0.0
        if result == 0 and ret_seq:
            out[b, k] = prev
    if result == 0 and not ret_seq:
        out[b, 0] = prev
    elif result == 1:
        out[b, 0] = h
    elif result == 2:
        out[b, 0] = c


@numba.njit(**PARALLEL_JIT_OPTIONS)
def conv_lstm_kernel(xp, rk, mask, h0, c0, out, act, ract, backwards, zero_out, result, ret_seq, has_mask, has_init):
    """Every batch row's recurrence; ``out`` is always 5-D (a last output or a state as (N, 1, H, W, F))."""
    for b in prange(xp.shape[0]):
        _row(xp, rk, mask, h0, c0, out, b, act, ract, backwards, zero_out, result, ret_seq, has_mask, has_init)


@register_kernel("conv_lstm")
def lower_conv_lstm(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    rk = ctx.constant(1)
    dtype = ctx.dtype
    flags = (cell_code(op.activation), cell_code(op.recurrent_activation), op.go_backwards, op.zero_output_for_mask,
             RESULTS[op.result], op.return_sequences, op.masked, op.initial_states > 0)
    dummy_mask = np.zeros((1, 1), dtype=dtype)
    dummy_state = np.zeros((1, 1, 1, 1), dtype=dtype)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        rest = list(inputs[2:])
        mask = np.ascontiguousarray(rest.pop(0), dtype=dtype) if op.masked else dummy_mask
        h0 = rest[0] if rest else dummy_state
        c0 = rest[1] if len(rest) > 1 else dummy_state
        out5 = out if out.ndim == 5 else out.reshape((out.shape[0], 1) + out.shape[1:])
        conv_lstm_kernel(inputs[0], rk, mask, h0, c0, out5, *flags)
        return out

    return LoweredOp(run=run, description="conv_lstm", work_per_element=4 * op.filters * op.kernel[0] * op.kernel[1])
