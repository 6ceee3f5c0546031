"""Reference kernels of the ops added for attention, normalization and Keras operations (issue 18).

Kept beside ``keydnn.ir.reference`` (which imports this module at its end) so
that the original table stays small; same rules: float64, from the op's
definition, obvious rather than fast.
"""

from __future__ import annotations


import numpy as np

from keydnn.ir.ops.reduce import norm_axes
from keydnn.ir.reference import kernel
from keydnn.ir.reference_functions import apply_binary_numpy, apply_numpy

__all__: list[str] = []


def _f64(args):
    return [np.asarray(a, dtype=np.float64) for a in args]


@kernel("layer_norm")
def _layer_norm(op, args):
    x, gamma, beta = _f64(args)
    axes = norm_axes(op.axes, x.ndim)
    mean = x.mean(axis=axes, keepdims=True)
    if op.statistic == "variance":
        stat = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    elif op.statistic == "mean_square":
        stat = (x * x).mean(axis=axes, keepdims=True)
    else:
        stat = (x * x).sum(axis=axes, keepdims=True)
    stat = stat + op.epsilon if op.eps_mode == "add" else np.maximum(stat, op.epsilon)
    centered = x - mean if op.center else x
    return centered / np.sqrt(stat) * _sample_param(gamma, x) + _sample_param(beta, x)


def _sample_param(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A scalar or sample-shaped parameter, broadcastable against ``x`` (batch axis in front)."""
    return p.reshape(()) if p.size == 1 and p.ndim != x.ndim - 1 else p[None]


@kernel("reduce")
def _reduce(op, args):
    (x,) = _f64(args)
    axes = norm_axes(op.axes, x.ndim)
    fn = {"mean": np.mean, "sum": np.sum, "max": np.max, "min": np.min}[op.mode]
    return fn(x, axis=axes, keepdims=op.keepdims)




@kernel("unary")
def _unary(op, args):
    (x,) = _f64(args)
    with np.errstate(all="ignore"):
        return apply_numpy(op.function, x, op.a, op.b)


@kernel("binary")
def _binary(op, args):
    x, y = _f64(args)
    return apply_binary_numpy(op.function, x, y)


@kernel("matmul")
def _matmul(op, args):
    x, y = _f64(args)
    return np.matmul(x, np.swapaxes(y, -1, -2) if op.transpose_b else y) * op.scale


@kernel("slice")
def _slice(op, args):
    index = (slice(None),) + tuple(slice(a, b, c) for a, b, c in zip(op.starts, op.stops, op.steps))
    return np.asarray(args[0])[index].astype(np.float64)


def _nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def _back(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


@kernel("dilate_pad2d")
def _dilate_pad2d(op, args):
    x = _nchw(np.asarray(args[0], np.float64), op.layout)
    n, c, h, w = x.shape
    (fh, fw), (t, b, left, r) = op.factors, op.pads
    y = np.zeros((n, c, (h - 1) * fh + 1 + t + b, (w - 1) * fw + 1 + left + r))
    y[:, :, t: t + (h - 1) * fh + 1: fh, left: left + (w - 1) * fw + 1: fw] = x
    return _back(y, op.layout)


@kernel("resize2d")
def _resize2d(op, args):
    from keydnn.ir.ops.resize import resize_taps

    x = _nchw(np.asarray(args[0], np.float64), op.layout)
    _, _, h, w = x.shape
    mats = []
    for size_in, size_out in ((h, op.size[0]), (w, op.size[1])):
        idx, wt = resize_taps(size_in, size_out, op.method, op.half_pixel)
        m = np.zeros((size_out, size_in))
        for o in range(size_out):
            for i, v in zip(idx[o], wt[o]):
                m[o, i] += v
        mats.append(m)
    return _back(np.einsum("oh,nchw,pw->ncop", mats[0], x, mats[1]), op.layout)


@kernel("bias_softmax")
def _bias_softmax(op, args):
    z = np.asarray(args[0], np.float64)
    for b in args[1:]:
        z = z + np.asarray(b, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
