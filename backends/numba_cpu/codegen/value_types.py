"""Concrete per-sample shapes of every value of a graph, for the code generator: the ops' own shape rules
run on the inputs' per-sample shapes, with the batch standing for ``N`` and time folded into the batch
(``fold_time`` / ``unfold_time``) counted as rows per sample (``Val.fold``).

Apart from ``program`` (which imports it) to keep that module to values, stages and the generated module's
assembly; the generator refuses here, by name, a graph whose shapes are not static or whose batch axis moves.
"""

from __future__ import annotations

from keydnn.backends.numba_cpu.codegen.refusals import Unsupported
from keydnn.ir.graph import Graph, Node
from keydnn.ir.types import TensorType

__all__ = ["value_types"]


def _fold_of(node: Node, ins: list[tuple[bool, TensorType, int]]) -> int:
    """Rows per graph sample (``Val.fold``) of ``node``'s result: a batch view multiplies or divides its
    operand's by the time steps; any other op keeps the one of its batched operands, which must agree."""
    if node.op.kind == "fold_time":
        b, t, fold = ins[0]
        if not b:
            raise Unsupported(f"node {node.name}: fold_time of a value without the batch axis")
        return fold * int(t.shape[1])
    if node.op.kind == "unfold_time":
        (_, x, x_fold), (b, like, like_fold) = ins
        if not b or x_fold != like_fold * int(like.shape[1]):
            raise Unsupported(f"node {node.name}: unfold_time of rows that are not its sequence's steps")
        return like_fold
    folds = {fold for b, _, fold in ins if b}
    if len(folds) > 1:
        raise Unsupported(f"node {node.name}: operands with time folded into the batch and without")
    return folds.pop() if folds else 1


def value_types(graph: Graph, sample_shapes: tuple[tuple[int, ...], ...], batched: tuple[bool, ...]) -> dict:
    """Concrete (batched, sample, lead, fold) of every value, from the ops' own shape rules (batch stands for N;
    a value with time folded into the batch has ``fold`` rows per sample, ``sample`` the shape of one)."""
    env: dict[str, tuple[bool, TensorType, int]] = {}
    probe = 7  # a batch size no static dim is compared against (only the rule's own arithmetic)
    for value, sample, b in zip(graph.inputs, sample_shapes, batched):
        env[value.name] = (b, value.type.with_shape(((probe if b else 1),) + tuple(sample)), 1)
    for c in graph.constants:
        env[c.name] = (False, c.type, 1)
    out: dict[str, tuple[bool, tuple[int, ...], int, int]] = {}
    for v in graph.inputs:
        b, t, _ = env[v.name]
        out[v.name] = (b, tuple(t.shape[1:]), 1, 1)
    for node in graph.nodes:
        ins = [env[i] for i in node.inputs]
        b = any(x[0] for x in ins if x is not None)
        t = node.op.infer([x[1] for x in ins])
        if not all(isinstance(d, int) for d in t.shape):
            raise Unsupported(f"node {node.name}: shape {t} is not static")
        fold = _fold_of(node, ins)
        if t.rank == 0 or (b and t.shape[0] != probe * fold) or (not b and t.shape[0] != 1):
            raise Unsupported(f"node {node.name}: the batch axis does not stay first")
        env[node.outputs[0].name] = (b, t, fold)
        out[node.outputs[0].name] = (b, tuple(t.shape[1:]), 1, fold)
    for name in graph.outputs:
        if out[name][3] != 1:
            raise Unsupported(f"graph output %{name} has time folded into the batch")
    return out
