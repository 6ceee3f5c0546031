"""fold-batchnorm: remove every batch_norm, into a neighbouring conv2d/dense or down to a scale_shift.

At inference a batch_norm is the per-channel affine map ``x * s + t`` with
``s = gamma / sqrt(variance + epsilon)`` and ``t = beta - mean * s``. Folding
it into the weights of the layer before it (or after it) costs nothing at run
time; where that is impossible or inexact it becomes a ``scale_shift``, which
every backend runs.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np

from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import ScaleShift
from keydnn.ir.ops.base import normalize_axis
from keydnn.ir.passes.base import Pass, PassResult, register_pass
from keydnn.ir.passes.rewrite import finish, fresh_name, rebuild, rename_uses, use_counts, used_names

__all__ = ["FoldBatchNorm", "batch_norm_affine"]

logger = logging.getLogger(__name__)


def batch_norm_affine(node: Node, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) in float64 with ``batch_norm(x) == x * s + t`` along the op's axis."""
    mean, var, gamma, beta = (weights[n].astype(np.float64) for n in node.inputs[1:5])
    s = gamma / np.sqrt(var + node.op.epsilon)  # type: ignore[attr-defined]
    return s, beta - mean * s


def _channel_axis(node: Node, rank: int) -> Optional[int]:
    """The axis of ``node``'s result (or operand) that holds its channels / features."""
    if node.op.kind == "conv2d":
        return 1 if node.op.layout == "NCHW" else 3  # type: ignore[attr-defined]
    if node.op.kind == "dense":
        return rank - 1
    return None


class _Folder:
    """Mutable working copy: the node list and new weights while batch_norms are removed one by one."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.nodes = list(graph.nodes)
        self.weights: dict[str, np.ndarray] = dict(graph.weights)
        self.new_weights: dict[str, np.ndarray] = {}
        self.taken = used_names(graph)
        self.outputs = list(graph.outputs)

    def constant(self, base: str, array: np.ndarray, like: str | None) -> str:
        dtype = self.weights[like].dtype if like is not None else np.float32
        name = fresh_name(base, self.taken)
        self.new_weights[name] = self.weights[name] = np.ascontiguousarray(array, dtype=dtype)
        return name

    def replace(self, old: Node, new: Node) -> None:
        self.nodes[self.nodes.index(old)] = new

    def drop(self, bn: Node, into: Node) -> None:
        """Remove ``bn``; its users (and graph outputs) read ``into``'s result instead."""
        self.nodes.remove(bn)
        rename = {bn.outputs[0].name: into.outputs[0].name}
        self.nodes = rename_uses(self.nodes, rename)
        self.outputs = [rename.get(o, o) for o in self.outputs]

    def bias(self, node: Node) -> np.ndarray:
        out = self.weights[node.inputs[1]].shape[0 if node.op.kind == "conv2d" else 1]
        return self.weights[node.inputs[2]].astype(np.float64) if len(node.inputs) > 2 else np.zeros(out)

    def set_params(self, node: Node, tag: str, w: np.ndarray, b: np.ndarray) -> Node:
        wname = node.inputs[1]
        new_w = self.constant(f"{wname}.{tag}", w, wname)
        base_b = f"{node.inputs[2]}.{tag}" if len(node.inputs) > 2 else f"{node.name}.bias.{tag}"
        new_b = self.constant(base_b, b, wname)
        new = node.model_copy(update={"inputs": (node.inputs[0], new_w, new_b)})
        self.replace(node, new)
        return new


def _fold_into_producer(f: _Folder, bn: Node, s: np.ndarray, t: np.ndarray) -> bool:
    producers = {o.name: n for n in f.nodes for o in n.outputs}
    prod = producers.get(bn.inputs[0])
    if prod is None or not prod.op.accepts_epilogue or prod.op.activation is not None:  # type: ignore[attr-defined]
        return False
    if use_counts(f.nodes, f.outputs).get(bn.inputs[0], 0) != 1:
        return False
    typ = prod.outputs[0].type
    if typ is None or normalize_axis(bn.op.axis, typ.rank) != _channel_axis(prod, typ.rank):  # type: ignore[attr-defined]
        return False
    w = f.weights[prod.inputs[1]].astype(np.float64)
    w = w * (s[:, None, None, None] if prod.op.kind == "conv2d" else s[None, :])
    new = f.set_params(prod, bn.name, w, f.bias(prod) * s + t)
    f.drop(bn, new)
    return True


def _fold_into_consumer(f: _Folder, bn: Node, s: np.ndarray, t: np.ndarray) -> bool:
    out = bn.outputs[0].name
    users = [n for n in f.nodes if out in n.inputs]
    if len(users) != 1 or out in f.outputs:
        return False
    cons = users[0]
    if not cons.op.accepts_epilogue or cons.inputs[0] != out or out in cons.inputs[1:]:
        return False
    typ = bn.outputs[0].type
    if typ is None or normalize_axis(bn.op.axis, typ.rank) != _channel_axis(cons, typ.rank):  # type: ignore[attr-defined]
        return False
    w = f.weights[cons.inputs[1]].astype(np.float64)
    if cons.op.kind == "conv2d":
        if any(cons.op.pads) and np.any(t != 0):  # type: ignore[attr-defined]
            return False  # zero padding of x*s+t is not x*s+t of zero padding: inexact
        o, ipg = w.shape[:2]
        groups = cons.op.groups  # type: ignore[attr-defined]
        chan = (np.arange(o)[:, None] // (o // groups)) * ipg + np.arange(ipg)[None, :]  # input channel of w[o, i]
        new_w = w * s[chan][:, :, None, None]
        new_b = f.bias(cons) + (w * t[chan][:, :, None, None]).sum(axis=(1, 2, 3))
    else:
        new_w = w * s[:, None]
        new_b = f.bias(cons) + t @ w
    f.set_params(cons, bn.name, new_w, new_b)
    f.nodes.remove(bn)
    f.nodes = rename_uses(f.nodes, {out: bn.inputs[0]})
    return True


def _lower_to_scale_shift(f: _Folder, bn: Node, s: np.ndarray, t: np.ndarray) -> bool:
    like = bn.inputs[1]
    scale = f.constant(f"{bn.name}.scale", s, like)
    shift = f.constant(f"{bn.name}.shift", t, like)
    op = ScaleShift(axis=bn.op.axis)  # type: ignore[attr-defined]
    f.replace(bn, bn.model_copy(update={"op": op, "inputs": (bn.inputs[0], scale, shift)}))
    return True


_STRATEGIES: tuple[Callable[[_Folder, Node, np.ndarray, np.ndarray], bool], ...] = (
    _fold_into_producer, _fold_into_consumer, _lower_to_scale_shift,
)


@register_pass
class FoldBatchNorm(Pass):
    """Guarantees: no batch_norm remains; numerics unchanged (up to rounding).

    Each batch_norm, in order, is folded into the conv2d (any groups) or dense
    that produces its operand when that producer has no other use and no
    fused activation; else into the conv2d/dense that is its only user, when
    that is exact (always for dense; for conv2d when the conv has no padding
    or the shift is zero); else it becomes ``scale_shift(x, s, t)`` on the same
    axis. A folded batch_norm's result is renamed to its neighbour's.
    """

    name = "fold-batchnorm"
    requires = ("typed",)
    ensures = ("no-batch-norm",)

    def run(self, graph: Graph) -> PassResult:
        if not any(n.op.kind == "batch_norm" for n in graph.nodes):
            return PassResult(graph, False)
        f = _Folder(graph)
        for bn in [n for n in graph.nodes if n.op.kind == "batch_norm"]:
            bn = next(n for n in f.nodes if n.name == bn.name)
            s, t = batch_norm_affine(bn, f.weights)
            for strategy in _STRATEGIES:
                if strategy(f, bn, s, t):
                    logger.debug("fold-batchnorm: %s by %s", bn.name, strategy.__name__)
                    break
        new = rebuild(graph, f.nodes, outputs=f.outputs, new_weights=f.new_weights)
        return finish(graph, new)
