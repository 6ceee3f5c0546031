"""fold-constants: compute at compile time what does not depend on the input.

Three rewrites, each dispatched through a table keyed by the op kind of the
node and of its producer:

* a node whose operands are all constants, used only where a constant is
  expected (a weight, a bias...), is evaluated with the reference kernels
  into a new constant of the same name;
* chains of data movement merge: transpose of transpose is one transpose;
  any reshape-like op (reshape, flatten, expand_dims, squeeze) of a
  reshape-like op reads the first one's operand directly (a squeeze undone
  by an expand_dims becomes a shape-preserving reshape that
  ``eliminate-identity`` removes);
* ``scale_shift`` of ``scale_shift`` is one ``scale_shift``.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import Reshape, ScaleShift, Transpose, kinds_with
from keydnn.ir.ops.base import normalize_axis
from keydnn.ir.passes.base import Pass, PassResult, register_pass
from keydnn.ir.passes.rewrite import finish, fresh_name, rebuild, used_names
from keydnn.ir.reference import REFERENCE_KERNELS

__all__ = ["FoldConstants", "MERGE_RULES", "RESHAPE_LIKE"]

RESHAPE_LIKE: frozenset[str] = kinds_with("is_view")


class _State:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.weights: dict[str, np.ndarray] = dict(graph.weights)
        self.new_weights: dict[str, np.ndarray] = {}
        self.taken = used_names(graph)
        self.producers: dict[str, Node] = {}

    def constant(self, base: str, array: np.ndarray, dtype: np.dtype) -> str:
        name = fresh_name(base, self.taken)
        self.new_weights[name] = self.weights[name] = np.ascontiguousarray(array, dtype=dtype)
        return name


Merge = Callable[[_State, Node, Node], Optional[Node]]


def _merge_transposes(st: _State, outer: Node, inner: Node) -> Optional[Node]:
    perm = tuple(inner.op.perm[i] for i in outer.op.perm)  # type: ignore[attr-defined]
    op = Transpose(perm=perm, layout=outer.op.layout)  # type: ignore[attr-defined]
    return outer.model_copy(update={"op": op, "inputs": (inner.inputs[0],)})


def _merge_reshapes(st: _State, outer: Node, inner: Node) -> Optional[Node]:
    if outer.op.kind == "flatten":
        return outer.model_copy(update={"inputs": (inner.inputs[0],)})
    typ = outer.outputs[0].type
    if typ is None or not all(isinstance(d, int) for d in typ.shape[1:]):
        return None
    op = Reshape(shape=tuple(typ.shape[1:]), layout=typ.layout)  # type: ignore[arg-type]
    return outer.model_copy(update={"op": op, "inputs": (inner.inputs[0],)})


def _as_sample(p: np.ndarray, axis: Optional[int], rank: int) -> np.ndarray:
    """A scale_shift parameter as an array of rank ``rank - 1`` (sample axes)."""
    if p.ndim == 0 or (p.ndim == 1 and p.size == 1 and axis is None):
        return p.reshape((1,) * (rank - 1))
    if axis is None:
        return p
    shape = [1] * (rank - 1)
    shape[normalize_axis(axis, rank) - 1] = p.shape[0]
    return p.reshape(shape)


def _compact(params: list[np.ndarray], rank: int) -> tuple[Optional[int], list[np.ndarray]]:
    """The simplest scale_shift form for sample-shaped ``params``: scalar, per-channel or broadcast."""
    varying = {i for p in params for i, d in enumerate(p.shape) if d != 1}
    if not varying:
        return None, [p.reshape(()) for p in params]
    if len(varying) == 1:
        (i,) = varying
        return i + 1, [p.reshape(()) if p.size == 1 else p.reshape(-1) for p in params]
    return None, params


def _merge_scale_shifts(st: _State, outer: Node, inner: Node) -> Optional[Node]:
    typ = outer.outputs[0].type
    if typ is None:
        return None
    rank = typ.rank
    s1, t1 = (_as_sample(st.weights[n].astype(np.float64), inner.op.axis, rank) for n in inner.inputs[1:])  # type: ignore[attr-defined]
    s2, t2 = (_as_sample(st.weights[n].astype(np.float64), outer.op.axis, rank) for n in outer.inputs[1:])  # type: ignore[attr-defined]
    axis, (scale, shift) = _compact([s1 * s2, t1 * s2 + t2], rank)
    dtype = st.weights[outer.inputs[1]].dtype
    base = f"{inner.name}+{outer.name}"
    names = (st.constant(f"{base}.scale", scale, dtype), st.constant(f"{base}.shift", shift, dtype))
    return outer.model_copy(update={"op": ScaleShift(axis=axis), "inputs": (inner.inputs[0], *names)})


#: (outer kind, inner kind) -> merge of ``outer(inner(x))`` into one node reading ``x``.
MERGE_RULES: dict[tuple[str, str], Merge] = {("transpose", "transpose"): _merge_transposes,
                                             ("scale_shift", "scale_shift"): _merge_scale_shifts}
MERGE_RULES.update({(o, i): _merge_reshapes for o in RESHAPE_LIKE for i in RESHAPE_LIKE})


def _foldable(node: Node, st: _State, users: dict[str, list[Node]]) -> bool:
    """All operands constant, and the result only used where a constant is wanted."""
    if not node.inputs or not all(i in st.weights for i in node.inputs) or node.op.kind not in REFERENCE_KERNELS:
        return False
    out = node.outputs[0].name
    if out in st.graph.outputs or node.op.kind == "opaque":
        return False
    for user in users.get(out, []):
        for pos, name in enumerate(user.inputs):
            operand = user.op.operands[pos].rstrip("?") if pos < len(user.op.operands) else ""
            if name == out and operand not in user.op.constant_operands:
                return False
    return True


@register_pass
class FoldConstants(Pass):
    """Guarantees: no node computes only from constants (where a constant may stand), no
    transpose/reshape-like/scale_shift node reads the result of another of its
    family; numerics unchanged (up to rounding of merged parameters).
    """

    name = "fold-constants"

    def run(self, graph: Graph) -> PassResult:
        st = _State(graph)
        users = graph.users()
        nodes: list[Node] = []
        for node in graph.nodes:
            if _foldable(node, st, users):
                value = REFERENCE_KERNELS[node.op.kind](node.op, [st.weights[i] for i in node.inputs])
                out = node.outputs[0]
                dtype = out.type.np_dtype if out.type is not None else st.weights[node.inputs[0]].dtype
                st.new_weights[out.name] = st.weights[out.name] = np.ascontiguousarray(value, dtype=dtype)
                continue
            inner = st.producers.get(node.inputs[0]) if node.inputs else None
            rule = MERGE_RULES.get((node.op.kind, inner.op.kind)) if inner is not None else None
            merged = rule(st, node, inner) if rule is not None and inner is not None else None
            node = merged if merged is not None else node
            st.producers[node.outputs[0].name] = node
            nodes.append(node)
        if len(nodes) == len(graph.nodes) and all(a is b for a, b in zip(nodes, graph.nodes)):
            return PassResult(graph, False)
        return finish(graph, rebuild(graph, nodes, new_weights=st.new_weights))
