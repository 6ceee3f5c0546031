"""One node as a one-node generated program: the per-op mode's driver of the generated-code kernel library.

The per-op mode (``KEYDNN_CPU_MODE=ops``; the fallback for graphs the whole-graph generator cannot
specialize) runs every node through the same emitters and helpers as generated code: each node becomes a
graph of its own, renamed canonically (inputs ``x0..``, constants ``c0..``, the node ``n``, its result
``y``, the graph ``op_<kind>``), so that nodes of one signature (op config, operand types) render the same
source and share one compiled entry through the compile cache (in this process and on disk); only their
weight blobs differ. Nothing here holds a second implementation of an op.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from keydnn.backends.numba_cpu.codegen.kinds import INPLACE_KINDS
from keydnn.backends.numba_cpu.runtime.executable import CodegenExecutable
from keydnn.ir.graph import Graph, Node
from keydnn.ir.types import TensorType, Value

__all__ = ["one_node_graph", "NodeProgram"]

logger = logging.getLogger(__name__)


def one_node_graph(node: Node, types: Mapping[str, TensorType], weights: Mapping[str, np.ndarray]) -> tuple[Graph, tuple[str, ...]]:
    """(the canonical one-node graph of ``node``, the names of its data operands in input order).

    Constant operands stay constants (the emitters pack them as they do in a whole graph); every other
    operand, once per distinct name, becomes an input of the graph's type for it.
    """
    data: list[str] = []
    rename: dict[str, str] = {}
    consts: dict[str, np.ndarray] = {}
    for name in node.inputs:
        if name in rename:
            continue
        if name in weights:
            rename[name] = f"c{len(consts)}"
            consts[rename[name]] = weights[name]
        else:
            rename[name] = f"x{len(data)}"
            data.append(name)
    inputs = tuple(Value(name=rename[name], type=types[name]) for name in data)
    out = Value(name="y", type=node.outputs[0].type)
    one = Node(name="n", op=node.op, inputs=tuple(rename[i] for i in node.inputs), outputs=(out,))
    graph = Graph.build(name=f"op_{node.op.kind}", inputs=inputs, outputs=("y",), nodes=(one,), weights=consts)
    return graph, tuple(data)


class NodeProgram(CodegenExecutable):
    """The generated program of one node, run into a buffer the per-op plan chose (``run``), so that the
    plan's arena reuse and in-place steps hold as before."""

    def __init__(self, graph: Graph, kind: str) -> None:
        super().__init__(graph)
        self.kind = kind

    def run(self, inputs: Sequence[np.ndarray], out: np.ndarray) -> np.ndarray:
        """Write the node's result for ``inputs`` (its data operands, in ``one_node_graph``'s order) into
        ``out`` (C-contiguous, of the result's shape and dtype) and return it."""
        if self._ids or self._checks:
            inputs = self._index_inputs(inputs)
        arrays = [a if type(a) is np.ndarray and a.dtype == dt and a.flags.c_contiguous and a.flags.writeable
                  else np.array(a, dtype=dt, order="C") for a, dt in zip(inputs, self._dtypes)]
        local = self._local
        plans = getattr(local, "plans", None)
        if plans is None:
            plans = local.plans = {}
            local.gen = 0
        shapes = tuple(a.shape for a in arrays)
        plan = plans.get(shapes) or self._plan(shapes, arrays)
        if plan.chunk >= plan.n:
            self._run(plan, arrays, [out])
            return out
        for c0 in range(0, plan.n, plan.chunk):  # every operand is batched (else one chunk covers the batch)
            part = [a[c0:c0 + plan.chunk] for a in arrays]
            shapes = tuple(a.shape for a in part)
            self._run(plans.get(shapes) or self._plan(shapes, part), part, [out[c0:c0 + plan.chunk]])
        return out

    @property
    def inplace(self) -> bool:
        return self.kind in INPLACE_KINDS
