"""numba-cpu kernels of the sequence ops: the recurrence (``rnn``), ``embedding``, ``sequence_mask``,
``masking`` and ``repeat_vector``.

The ``rnn`` kernel runs only the recurrence: the input projection of all time
steps is the ``dense`` node before it (one matrix product, threaded by the
dense kernel). Per batch row it keeps h, c and the gate pre-activations in
three small arrays (a few KiB: L1-resident), fuses the gate activations and
the state update into one pass over the units, and splits batch rows across
threads (``prange``) when there is more than one. Shapes are read at call
time, so one compiled kernel serves every sequence length and batch.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.codegen.codes import ACTIVATION_CODES, LINEAR, RELU0, SIGMOID, TANH
from keydnn.backends.numba_cpu.kernels.functions import apply_function
from keydnn.backends.numba_cpu.ops.lowering import JIT_OPTIONS, PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel

__all__ = ["rnn_kernel", "rnn_serial", "cell_code", "CELLS", "RESULTS", "ROWS"]

logger = logging.getLogger(__name__)

#: cell kind -> kernel code; result -> kernel code.
CELLS = {"simple": 0, "lstm": 1, "gru": 2}
RESULTS = {"output": 0, "state_h": 1, "state_c": 2}


def cell_code(name: str) -> int:
    """Activation code of a cell activation name (``relu`` is plain max(x, 0))."""
    return RELU0 if name == "relu" else ACTIVATION_CODES[name]


@numba.njit(**JIT_OPTIONS)
def _apply(a, lo, hi, code):
    """Activation ``code`` over ``a[lo:hi]`` in place. Sigmoid and tanh (the usual gates) are tight loops
    over ``exp`` in the array's dtype, which LLVM vectorizes (libm's scalar ``tanh`` is ten times slower);
    tanh is ``1 - 2 / (exp(2x) + 1)`` (exact at the limits, within 1e-7 absolute of tanh)."""
    if code == SIGMOID:
        for j in range(lo, hi):
            a[j] = 1.0 / (1.0 + np.exp(-a[j]))
    elif code == TANH:
        for j in range(lo, hi):
            a[j] = 1.0 - 2.0 / (np.exp(a[j] + a[j]) + 1.0)
    elif code != LINEAR:
        for j in range(lo, hi):
            a[j] = apply_function(a[j], code, 1.0, 0.0, 0.0, 0.0)


#: Batch rows one thread advances together: each row of the recurrent kernel is read once per step for all
#: of them (a small matrix product instead of ROWS matrix-vector products), their gates fit in L1.
ROWS = 8


@numba.njit(**JIT_OPTIONS)
def _block(xp, u, rb, mask, h0, c0, out, lo, hi, cell, reset_after, act, ract, backwards, restore, zero_out,
           result, ret_seq, has_mask, has_init):
    """The recurrence of batch rows ``lo:hi`` over all steps. ``out`` is always 3-D (a last output or a
    state is written as ``(N, 1, units)``). State and gates are in the compute dtype, in small arrays."""
    steps = xp.shape[1]
    n = u.shape[0]
    g = u.shape[1]
    rows = hi - lo
    h = np.empty((rows, n), dtype=xp.dtype)
    c = np.empty((rows, n), dtype=xp.dtype)
    prev = np.zeros((rows, n), dtype=xp.dtype)
    rh = np.empty((rows, n), dtype=xp.dtype)
    z = np.empty((rows, g), dtype=xp.dtype)
    for r in range(rows):
        for j in range(n):
            h[r, j] = h0[lo + r, j] if has_init else 0.0
            c[r, j] = c0[lo + r, j] if has_init and cell == 1 else 0.0
    split = cell == 2 and not reset_after  # GRU v1: the h gate multiplies (r * h), not h, by its kernel block
    gm = 2 * n if split else g
    for k in range(steps):
        t = steps - 1 - k if backwards else k
        for r in range(rows):  # z = rb + h @ u (the first gm columns)
            for j in range(gm):
                z[r, j] = rb[j]
        for i in range(n):
            ui = u[i]
            for r in range(rows):
                hv = h[r, i]
                zr = z[r]
                for j in range(gm):
                    zr[j] += hv * ui[j]
        if split:
            for r in range(rows):
                zr = z[r]
                x = xp[lo + r, t]
                for j in range(2 * n):
                    zr[j] += x[j]
                _apply(zr, 0, 2 * n, ract)
                for i in range(n):
                    rh[r, i] = zr[n + i] * h[r, i]
                for j in range(2 * n, g):
                    zr[j] = rb[j]
            for i in range(n):
                ui = u[i]
                for r in range(rows):
                    hv = rh[r, i]
                    zr = z[r]
                    for j in range(2 * n, g):
                        zr[j] += hv * ui[j]
        for r in range(rows):
            b = lo + r
            if (not has_mask) or mask[b, t] != 0.0:
                x = xp[b, t]
                zr = z[r]
                hr = h[r]
                if cell == 0:
                    for j in range(n):
                        hr[j] = x[j] + zr[j]
                    _apply(hr, 0, n, act)
                elif cell == 1:
                    for j in range(g):
                        zr[j] += x[j]
                    _apply(zr, 0, 2 * n, ract)
                    _apply(zr, 2 * n, 3 * n, act)
                    _apply(zr, 3 * n, g, ract)
                    cr = c[r]
                    for j in range(n):
                        cc = zr[n + j] * cr[j] + zr[j] * zr[2 * n + j]
                        cr[j] = cc
                        hr[j] = cc
                    _apply(hr, 0, n, act)
                    for j in range(n):
                        hr[j] *= zr[3 * n + j]
                elif split:
                    for j in range(2 * n, g):
                        zr[j] += x[j]
                    _apply(zr, 2 * n, g, act)
                    for j in range(n):
                        hr[j] = zr[j] * hr[j] + (1.0 - zr[j]) * zr[2 * n + j]
                else:
                    for j in range(2 * n):
                        zr[j] += x[j]
                    _apply(zr, 0, 2 * n, ract)
                    for j in range(n):
                        zr[2 * n + j] = x[2 * n + j] + zr[n + j] * zr[2 * n + j]
                    _apply(zr, 2 * n, g, act)
                    for j in range(n):
                        hr[j] = zr[j] * hr[j] + (1.0 - zr[j]) * zr[2 * n + j]
                for j in range(n):
                    prev[r, j] = hr[j]
            elif zero_out:
                for j in range(n):
                    prev[r, j] = 0.0
            if result == 0 and ret_seq:
                slot = (steps - 1 - k) if restore else k
                for j in range(n):
                    out[b, slot, j] = prev[r, j]
    for r in range(rows):
        for j in range(n):
            if result == 0 and not ret_seq:
                out[lo + r, 0, j] = prev[r, j]
            elif result == 1:
                out[lo + r, 0, j] = h[r, j]
            elif result == 2:
                out[lo + r, 0, j] = c[r, j]


@numba.njit(**PARALLEL_JIT_OPTIONS)
def rnn_kernel(xp, u, rb, mask, h0, c0, out, cell, reset_after, act, ract, backwards, restore, zero_out, result,
               ret_seq, has_mask, has_init):
    """Every batch row's recurrence, ``ROWS`` rows per task; tasks run on separate threads."""
    total = xp.shape[0]
    for blk in prange((total + ROWS - 1) // ROWS):
        lo = blk * ROWS
        _block(xp, u, rb, mask, h0, c0, out, lo, min(lo + ROWS, total), cell, reset_after, act, ract, backwards,
               restore, zero_out, result, ret_seq, has_mask, has_init)


@numba.njit(**JIT_OPTIONS)
def rnn_serial(xp, u, rb, mask, h0, c0, out, cell, reset_after, act, ract, backwards, restore, zero_out, result,
               ret_seq, has_mask, has_init):
    """``rnn_kernel`` on the calling thread (at most ``ROWS`` rows: no thread pool to wake)."""
    _block(xp, u, rb, mask, h0, c0, out, 0, xp.shape[0], cell, reset_after, act, ract, backwards, restore,
           zero_out, result, ret_seq, has_mask, has_init)


@register_kernel("rnn")
def lower_rnn(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    u, rb = ctx.constant(1), ctx.constant(2)
    dtype = ctx.dtype
    codes = (CELLS[op.cell], op.reset_after, cell_code(op.activation), cell_code(op.recurrent_activation),
             op.go_backwards, op.restore_time_order, op.zero_output_for_mask, RESULTS[op.result],
             op.return_sequences, op.masked, op.initial_states > 0)
    dummy = np.zeros((1, 1), dtype=dtype)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        xp = inputs[0]
        rest = list(inputs[3:])
        mask = np.ascontiguousarray(rest.pop(0), dtype=dtype) if op.masked else dummy
        h0 = rest[0] if rest else dummy
        c0 = rest[1] if len(rest) > 1 else dummy
        fn = rnn_kernel if xp.shape[0] > ROWS else rnn_serial
        fn(xp, u, rb, mask, h0, c0, out if out.ndim == 3 else out.reshape(out.shape[0], 1, out.shape[1]), *codes)
        return out

    return LoweredOp(run=run, description=f"rnn_{op.cell}", work_per_element=4 * op.units)


@register_kernel("embedding")
def lower_embedding(ctx: LowerContext) -> LoweredOp:
    table = ctx.constant(1)
    vocab = table.shape[0]

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        idx = x if x.dtype.kind in "iu" else np.trunc(x)
        if idx.size and (idx.min() < 0 or idx.max() >= vocab):
            bad = idx[(idx < 0) | (idx >= vocab)].flat[0]
            raise ValueError(f"embedding {ctx.node.name!r}: index {bad} is outside the table [0, {vocab})")
        np.take(table, idx.astype(np.intp, copy=False), axis=0, out=out)
        return out

    return LoweredOp(run=run, description="embedding")


@register_kernel("sequence_mask")
def lower_sequence_mask(ctx: LowerContext) -> LoweredOp:
    value = ctx.node.op.mask_value

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        keep = inputs[0] != value
        out[...] = keep if keep.ndim == 2 else keep.any(axis=-1)
        return out

    return LoweredOp(run=run, description="sequence_mask")


@register_kernel("masking")
def lower_masking(ctx: LowerContext) -> LoweredOp:
    value = ctx.node.op.mask_value

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        np.multiply(x, (x != value).any(axis=-1, keepdims=True), out=out)
        return out

    return LoweredOp(run=run, description="masking")


@register_kernel("repeat_vector")
def lower_repeat_vector(ctx: LowerContext) -> LoweredOp:
    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        out[...] = inputs[0][:, None, :]
        return out

    return LoweredOp(run=run, description="repeat_vector")



@register_kernel("fold_time")
def lower_fold_time(ctx: LowerContext) -> LoweredOp:
    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])

    return LoweredOp(run=run, allocates=False, description="fold_time (view)")


@register_kernel("unfold_time")
def lower_unfold_time(ctx: LowerContext) -> LoweredOp:
    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x, like = inputs
        return x.reshape(like.shape[:2] + x.shape[1:])

    return LoweredOp(run=run, allocates=False, description="unfold_time (view)")
