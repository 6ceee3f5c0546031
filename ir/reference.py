"""NumPy reference interpreter: runs any graph op by op; the oracle for backends and passes.

Written for obviousness, not speed: every kernel computes in float64 from the
definition of the op and casts to the value's dtype at the end. Kernels live in
one table keyed by op kind (``REFERENCE_KERNELS``) so a new op adds one entry.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from keydnn.errors import BackendError
from keydnn.ir.graph import Graph
from keydnn.ir.ops import OpBase
from keydnn.ir.reference_functions import apply_numpy

__all__ = ["run_reference", "REFERENCE_KERNELS", "apply_activation"]

Kernel = Callable[[OpBase, list[np.ndarray]], np.ndarray]
REFERENCE_KERNELS: dict[str, Kernel] = {}


def kernel(kind: str) -> Callable[[Kernel], Kernel]:
    def register(fn: Kernel) -> Kernel:
        REFERENCE_KERNELS[kind] = fn
        return fn

    return register


def _to_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


def _from_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCHW" else x.transpose(0, 2, 3, 1)


def _windows(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int) -> np.ndarray:
    """(N, C, OH, OW, KH, KW) view of the windows of an already padded NCHW array."""
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (span_h, span_w), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw]


def _epilogue(op: OpBase, y: np.ndarray) -> np.ndarray:
    act = getattr(op, "activation", None)
    return y if act is None else apply_activation(act, y)


def apply_activation(op: OpBase, x: np.ndarray) -> np.ndarray:
    return REFERENCE_KERNELS[op.kind](op, [x])


@kernel("conv2d")
def _conv2d(op, args):
    x = _to_nchw(args[0], op.layout).astype(np.float64)
    w = args[1].astype(np.float64)
    pt, pb, pl, pr = op.pads
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    o, ipg, kh, kw = w.shape
    g = op.groups
    win = _windows(x, kh, kw, *op.strides, *op.dilations)  # N, C, OH, OW, KH, KW
    n, _, oh, ow = win.shape[:4]
    win = win.reshape(n, g, ipg, oh, ow, kh, kw)
    wg = w.reshape(g, o // g, ipg, kh, kw)
    y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(n, o, oh, ow)
    if len(args) > 2:
        y = y + args[2].astype(np.float64)[None, :, None, None]
    return _from_nchw(_epilogue(op, y), op.layout)


@kernel("max_pool2d")
def _max_pool2d(op, args):
    x = _to_nchw(args[0], op.layout).astype(np.float64)
    pt, pb, pl, pr = op.pads
    x = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-np.inf)
    y = _windows(x, *op.kernel, *op.strides, 1, 1).max(axis=(4, 5))
    return _from_nchw(y, op.layout)


@kernel("avg_pool2d")
def _avg_pool2d(op, args):
    x = _to_nchw(args[0], op.layout).astype(np.float64)
    pt, pb, pl, pr = op.pads
    pad = ((0, 0), (0, 0), (pt, pb), (pl, pr))
    total = _windows(np.pad(x, pad), *op.kernel, *op.strides, 1, 1).sum(axis=(4, 5))
    ones = np.pad(np.ones((1, 1) + x.shape[2:]), pad)
    count = _windows(ones, *op.kernel, *op.strides, 1, 1).sum(axis=(4, 5))
    return _from_nchw(total / count, op.layout)


@kernel("global_avg_pool2d")
def _global_avg_pool2d(op, args):
    axes = (2, 3) if op.layout == "NCHW" else (1, 2)
    return args[0].astype(np.float64).mean(axis=axes, keepdims=op.keepdims)


@kernel("dense")
def _dense(op, args):
    y = args[0].astype(np.float64) @ args[1].astype(np.float64)
    if len(args) > 2:
        y = y + args[2].astype(np.float64)
    return _epilogue(op, y)


@kernel("flatten")
def _flatten(op, args):
    return args[0].reshape(args[0].shape[0], -1)


@kernel("reshape")
def _reshape(op, args):
    return args[0].reshape((args[0].shape[0],) + tuple(op.shape))


@kernel("transpose")
def _transpose(op, args):
    return np.transpose(args[0], op.perm)


@kernel("relu")
def _relu(op, args):
    # Keras's own formula (keras.activations.relu): positive part zeroed at or below the threshold,
    # clipped to [0, max_value], minus negative_slope * relu(threshold - x).
    x = args[0].astype(np.float64)
    y = np.where(x > op.threshold, x, 0.0)
    if op.max_value is not None:
        y = np.clip(y, 0.0, op.max_value)
    if op.negative_slope != 0.0:
        y = y - op.negative_slope * np.maximum(op.threshold - x, 0.0)
    return y


@kernel("softmax")
def _softmax(op, args):
    x = args[0].astype(np.float64)
    e = np.exp(x - x.max(axis=op.axis, keepdims=True))
    return e / e.sum(axis=op.axis, keepdims=True)


def _along(param: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    """A per-channel (axis set) or per-sample (axis None) parameter, shaped to broadcast against x."""
    p = np.asarray(param, dtype=np.float64)
    if p.ndim == 0 or (p.ndim == 1 and p.size == 1):
        return p.reshape(())
    if axis is None:
        return p[None]
    shape = [1] * rank
    shape[axis % rank] = p.shape[0]
    return p.reshape(shape)


@kernel("batch_norm")
def _batch_norm(op, args):
    x = args[0].astype(np.float64)
    mean, var, gamma, beta = (_along(a, op.axis, x.ndim) for a in args[1:])
    return gamma * (x - mean) / np.sqrt(var + op.epsilon) + beta


@kernel("scale_shift")
def _scale_shift(op, args):
    x = args[0].astype(np.float64)
    return x * _along(args[1], op.axis, x.ndim) + _along(args[2], op.axis, x.ndim)


@kernel("prelu")
def _prelu(op, args):
    x = args[0].astype(np.float64)
    alpha = _along(args[1], None, x.ndim)
    return np.maximum(x, 0.0) + alpha * np.minimum(x, 0.0)


@kernel("pad2d")
def _pad2d(op, args):
    x = _to_nchw(args[0], op.layout).astype(np.float64)
    top, bottom, left, right = op.pads
    y = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=op.value)
    return _from_nchw(y, op.layout)


@kernel("crop2d")
def _crop2d(op, args):
    x = _to_nchw(args[0], op.layout).astype(np.float64)
    top, bottom, left, right = op.crops
    h, w = x.shape[2:]
    return _from_nchw(x[:, :, top:h - bottom, left:w - right], op.layout)


@kernel("upsample2d")
def _upsample2d(op, args):
    x = _to_nchw(args[0], op.layout).astype(np.float64)
    y = x.repeat(op.factors[0], axis=2).repeat(op.factors[1], axis=3)
    return _from_nchw(y, op.layout)


@kernel("global_max_pool2d")
def _global_max_pool2d(op, args):
    axes = (2, 3) if op.layout == "NCHW" else (1, 2)
    return args[0].astype(np.float64).max(axis=axes, keepdims=op.keepdims)


@kernel("expand_dims")
def _expand_dims(op, args):
    return np.expand_dims(args[0], op.axis)


@kernel("squeeze")
def _squeeze(op, args):
    return np.squeeze(args[0], axis=op.axis)


@kernel("activation")
def _activation(op, args):
    return apply_numpy(op.function, args[0], op.alpha)


@kernel("opaque")
def _opaque(op, args):
    raise BackendError(f"cannot run unsupported {op.keras_class} layer: {op.reason}")


def run_reference(graph: Graph, *args: Mapping[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Run ``graph`` on its inputs: a dict by name, or the arrays in the graph's input order
    (``run_reference(g, x)``, ``run_reference(g, x1, x2)`` or ``run_reference(g, [x1, x2])``)."""
    if len(args) == 1 and isinstance(args[0], Mapping):
        inputs = dict(args[0])
    else:
        arrays = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
        if len(arrays) != len(graph.inputs):
            names = ", ".join(v.name for v in graph.inputs)
            raise ValueError(f"graph has {len(graph.inputs)} input(s) ({names}); got {len(arrays)} array(s)")
        inputs = {v.name: np.asarray(a) for v, a in zip(graph.inputs, arrays)}
    missing = [v.name for v in graph.inputs if v.name not in inputs]
    if missing:
        raise ValueError(f"missing graph input(s) {missing}")
    opaque = graph.find_opaque()
    if opaque:
        names = ", ".join(f"{n.name} ({n.op.keras_class})" for n in opaque)
        raise BackendError(f"graph contains unsupported placeholder layers and cannot run: {names}")
    env: dict[str, np.ndarray] = dict(graph.weights)
    env.update(inputs)
    for node in graph.nodes:
        out_type = node.outputs[0].type
        result = REFERENCE_KERNELS[node.op.kind](node.op, [env[i] for i in node.inputs])
        dtype = out_type.np_dtype if out_type is not None else env[node.inputs[0]].dtype
        env[node.outputs[0].name] = np.asarray(result).astype(dtype, copy=False)
    return [env[o] for o in graph.outputs]


# -- merge ops (keydnn.ir.ops.merge): NumPy broadcasting on equal ranks -----------------------


def _f64(args: list[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in args]


@kernel("add")
def _add(op, args):
    xs = _f64(args)
    y = xs[0]
    for x in xs[1:]:
        y = y + x
    return y


@kernel("sub")
def _sub(op, args):
    x, y = _f64(args)
    return x - y


@kernel("mul")
def _mul(op, args):
    xs = _f64(args)
    y = xs[0]
    for x in xs[1:]:
        y = y * x
    return y


@kernel("avg")
def _avg(op, args):
    return _add(op, args) / len(args)


@kernel("max")
def _max(op, args):
    xs = _f64(args)
    y = xs[0]
    for x in xs[1:]:
        y = np.maximum(y, x)
    return y


@kernel("min")
def _min(op, args):
    xs = _f64(args)
    y = xs[0]
    for x in xs[1:]:
        y = np.minimum(y, x)
    return y


@kernel("concat")
def _concat(op, args):
    return np.concatenate(_f64(args), axis=op.axis)
from keydnn.ir import reference_recurrent  # noqa: E402,F401  (registers the sequence ops)


from keydnn.ir import reference_ext as _reference_ext  # noqa: E402,F401  (registers the issue-18 kernels)
