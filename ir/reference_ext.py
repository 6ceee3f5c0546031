"""Reference kernels of the ops added for attention, normalization and Keras operations (issue 18).

Kept beside ``keydnn.ir.reference`` (which imports this module at its end) so
that the original table stays small; same rules: float64, from the op's
definition, obvious rather than fast.
"""

from __future__ import annotations

import numpy as np

from keydnn.ir.ops.reduce import norm_axes
from keydnn.ir.reference import kernel

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
