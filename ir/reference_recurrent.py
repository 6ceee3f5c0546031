"""Reference kernels of the sequence ops (``keydnn.ir.ops.recurrent``), in float64.

The recurrences follow Keras's cell code term by term (keras/src/layers/rnn/
{simple_rnn,lstm,gru}.py and the masked loop of keras.backend.rnn): a masked
step keeps the previous states, and outputs zero (``zero_output_for_mask``)
or the previous output.
"""

from __future__ import annotations

import numpy as np

from keydnn.errors import BackendError
from keydnn.ir.reference import kernel
from keydnn.ir.reference_functions import apply_numpy

__all__ = ["cell_activation", "run_rnn"]


def cell_activation(name: str, x: np.ndarray) -> np.ndarray:
    """A cell activation by name (``relu`` is the plain max(x, 0))."""
    if name == "relu":
        return np.maximum(x, 0.0)
    return apply_numpy(name, x, 1.0)


def _step(op, xp: np.ndarray, h: np.ndarray, c: np.ndarray, u: np.ndarray, rb: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    act = lambda v: cell_activation(op.activation, v)  # noqa: E731
    ract = lambda v: cell_activation(op.recurrent_activation, v)  # noqa: E731
    n = op.units
    if op.cell == "simple":
        return act(xp + h @ u + rb), c
    if op.cell == "lstm":
        z = xp + h @ u + rb
        i, f, g, o = (z[:, k * n:(k + 1) * n] for k in range(4))
        i, f, o = ract(i), ract(f), ract(o)
        c_new = f * c + i * act(g)
        return o * act(c_new), c_new
    xz, xr, xh = (xp[:, k * n:(k + 1) * n] for k in range(3))
    if op.reset_after:
        inner = h @ u + rb
        rz, rr, rh = (inner[:, k * n:(k + 1) * n] for k in range(3))
        z, r = ract(xz + rz), ract(xr + rr)
        hh = act(xh + r * rh)
    else:
        z = ract(xz + h @ u[:, :n] + rb[:n])
        r = ract(xr + h @ u[:, n:2 * n] + rb[n:2 * n])
        hh = act(xh + (r * h) @ u[:, 2 * n:] + rb[2 * n:])
    return z * h + (1.0 - z) * hh, c


def run_rnn(op, args: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sequence in processing order, last output, h, c) of one recurrence."""
    xp, u, rb = (np.asarray(a, dtype=np.float64) for a in args[:3])
    rest = list(args[3:])
    mask = np.asarray(rest.pop(0), dtype=np.float64) if op.masked else None
    n_batch, steps = xp.shape[0], xp.shape[1]
    h = np.zeros((n_batch, op.units))
    c = np.zeros((n_batch, op.units))
    if op.initial_states:
        h = np.asarray(rest[0], dtype=np.float64).copy()
        if op.cell == "lstm":
            c = np.asarray(rest[1], dtype=np.float64).copy()
    out = np.zeros((n_batch, op.units))
    seq = np.zeros((n_batch, steps, op.units))
    order = range(steps - 1, -1, -1) if op.go_backwards else range(steps)
    for k, t in enumerate(order):
        h_new, c_new = _step(op, xp[:, t], h, c, u, rb)
        if mask is None:
            h, c, out = h_new, c_new, h_new
        else:
            m = mask[:, t][:, None] != 0
            h = np.where(m, h_new, h)
            c = np.where(m, c_new, c)
            out = np.where(m, h_new, 0.0 if op.zero_output_for_mask else out)
        seq[:, k] = out
    return seq, out, h, c


@kernel("rnn")
def _rnn(op, args):
    seq, last, h, c = run_rnn(op, args)
    if op.result == "state_h":
        return h
    if op.result == "state_c":
        return c
    if not op.return_sequences:
        return last
    return seq[:, ::-1] if op.restore_time_order else seq


@kernel("embedding")
def _embedding(op, args):
    x, table = args
    idx = np.trunc(x).astype(np.int64) if x.dtype.kind == "f" else x.astype(np.int64)
    bad = (idx < 0) | (idx >= table.shape[0])
    if bad.any():
        raise BackendError(f"embedding index {int(idx[bad].flat[0])} is outside the table [0, {table.shape[0]})")
    return table.astype(np.float64)[idx]


@kernel("sequence_mask")
def _sequence_mask(op, args):
    x = np.asarray(args[0], dtype=np.float64)
    keep = x != op.mask_value
    return (keep if x.ndim == 2 else keep.any(axis=-1)).astype(np.float64)


@kernel("masking")
def _masking(op, args):
    x = np.asarray(args[0], dtype=np.float64)
    return x * (x != op.mask_value).any(axis=-1, keepdims=True)


@kernel("repeat_vector")
def _repeat_vector(op, args):
    x = np.asarray(args[0], dtype=np.float64)
    return np.repeat(x[:, None, :], op.n, axis=1)


@kernel("fold_time")
def _fold_time(op, args):
    x = args[0]
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


@kernel("unfold_time")
def _unfold_time(op, args):
    x, like = args
    return x.reshape(like.shape[:2] + x.shape[1:])


def _same_conv_nhwc(h: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Stride-1 'same' convolution of (N, H, W, C) by (kh, kw, C, O), TensorFlow's padding rule."""
    kh, kw = w.shape[:2]
    top, left = (kh - 1) // 2, (kw - 1) // 2
    hp = np.pad(h, ((0, 0), (top, kh - 1 - top), (left, kw - 1 - left), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(hp, (kh, kw), axis=(1, 2))  # N, H, W, C, kh, kw
    return np.einsum("nhwcij,ijco->nhwo", win, w, optimize=True)


@kernel("conv_lstm")
def _conv_lstm(op, args):
    xp, rk = (np.asarray(a, dtype=np.float64) for a in args[:2])
    rest = list(args[2:])
    mask = np.asarray(rest.pop(0), dtype=np.float64) if op.masked else None
    n_batch, steps, hh, ww, _ = xp.shape
    f = op.filters
    h = np.zeros((n_batch, hh, ww, f))
    c = np.zeros((n_batch, hh, ww, f))
    if op.initial_states:
        h, c = (np.asarray(s, dtype=np.float64).copy() for s in rest[:2])
    out = np.zeros_like(h)
    seq = np.zeros((n_batch, steps, hh, ww, f))
    act = lambda v: cell_activation(op.activation, v)  # noqa: E731
    ract = lambda v: cell_activation(op.recurrent_activation, v)  # noqa: E731
    order = range(steps - 1, -1, -1) if op.go_backwards else range(steps)
    for k, t in enumerate(order):
        z = xp[:, t] + _same_conv_nhwc(h, rk)
        i, fg, g, o = (z[..., q * f:(q + 1) * f] for q in range(4))
        c_new = ract(fg) * c + ract(i) * act(g)
        h_new = ract(o) * act(c_new)
        if mask is None:
            h, c, out = h_new, c_new, h_new
        else:
            m = (mask[:, t] != 0)[:, None, None, None]
            h, c = np.where(m, h_new, h), np.where(m, c_new, c)
            out = np.where(m, h_new, 0.0 if op.zero_output_for_mask else out)
        seq[:, k] = out
    if op.result == "state_h":
        return h
    if op.result == "state_c":
        return c
    return seq if op.return_sequences else out
