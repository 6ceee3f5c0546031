"""What each node of the per-op mode runs: its one-node generated program, a view, a per-op-only kernel, or
(for a node the generator refuses) the reference kernel.

Every kind the generator has an emitter for runs as a one-node generated program (``one_node``): the same
emitters and helpers as whole-graph code, compiled once per node signature. View kinds (flatten, reshape,
expand_dims, squeeze, fold_time, unfold_time) never move data and are reshapes to the step's concrete shape.
A kind in ``modes.PER_OP_ONLY`` (none today) would run a per-op kernel registered in ``lowering.KERNELS``. A
node the generator refuses for a reason of its own (a transpose or softmax over the batch axis, an operand
without the batch axis) runs on the NumPy reference kernel (``ir.reference``: the backends' oracle, not a
second CPU implementation), and a ``SlowPathWarning`` names it.
"""

from __future__ import annotations

import logging
import warnings
from typing import Mapping, Optional, Sequence

import numpy as np

from keydnn.backends.numba_cpu.codegen.kinds import INPLACE_KINDS, VIEW_KINDS
from keydnn.backends.numba_cpu.codegen.program import LayoutUnsupported
from keydnn.backends.numba_cpu.codegen.program import Unsupported as GeneratorRefusal
from keydnn.backends.numba_cpu.ops.lowering import KERNELS, LowerContext, LoweredOp, Unsupported
from keydnn.errors import SlowPathWarning
from keydnn.ir.graph import Node
from keydnn.ir.types import TensorType

__all__ = ["lower_node", "ops_mode_kinds", "VIEW_STEP_KINDS"]

logger = logging.getLogger(__name__)

#: Kinds whose step is a reshape of its first operand to the result's concrete shape (no kernel).
VIEW_STEP_KINDS = VIEW_KINDS | {"fold_time", "unfold_time"}


def _emitters() -> Mapping[str, object]:
    from keydnn.backends.numba_cpu.runtime.executable import EMITTERS

    return EMITTERS


def ops_mode_kinds() -> frozenset[str]:
    """Every op kind the per-op mode runs: the generator's, the views and the per-op-only kernels."""
    return frozenset(_emitters()) | VIEW_STEP_KINDS | frozenset(KERNELS)


def _view(kind: str) -> LoweredOp:
    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:  # the executor reshapes
        return inputs[0]

    return LoweredOp(run=run, allocates=False, description=f"{kind} (view)")


def _program(node: Node, types: Mapping[str, TensorType], weights: Mapping[str, np.ndarray]) -> LoweredOp:
    from keydnn.backends.numba_cpu.ops.one_node import NodeProgram, one_node_graph

    graph, data = one_node_graph(node, types, weights)
    program = NodeProgram(graph, node.op.kind)  # compiles (or loads) the declared shapes now
    first = {name: node.inputs.index(name) for name in data}
    positions = tuple(first[name] for name in data)

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        return program.run([inputs[p] for p in positions], out)

    run.program = program  # type: ignore[attr-defined]  (inspection, set_threads)
    return LoweredOp(run=run, inplace=node.op.kind in INPLACE_KINDS,
                     description=f"{node.op.kind} (generated, {program.graph.name})")


def _reference(node: Node, why: str) -> LoweredOp:
    from keydnn.ir.reference import REFERENCE_KERNELS

    kernel, op = REFERENCE_KERNELS[node.op.kind], node.op

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        out[...] = kernel(op, list(inputs))
        return out

    warnings.warn(f"node {node.name!r} ({node.op.kind}) runs on the NumPy reference kernel: the code generator "
                  f"refuses it ({why})", SlowPathWarning, stacklevel=6)
    return LoweredOp(run=run, description=f"{node.op.kind} (reference: {why})")


def lower_node(node: Node, in_types: tuple[TensorType, ...], types: Mapping[str, TensorType],
               weights: Mapping[str, np.ndarray]) -> LoweredOp:
    """The step of ``node``; ``Unsupported`` (naming what is wrong) where the per-op mode cannot run it."""
    kind = node.op.kind
    if kind in VIEW_STEP_KINDS:
        return _view(kind)
    lowering = KERNELS.get(kind)
    if lowering is not None:
        return lowering(LowerContext(node=node, in_types=in_types, out_type=node.outputs[0].type, weights=weights))
    if kind not in _emitters():
        raise Unsupported(f"op kind {kind!r} has no numba-cpu code generator; supported: "
                          f"{', '.join(sorted(ops_mode_kinds()))}")
    try:
        return _program(node, types, weights)
    except LayoutUnsupported as exc:  # a pass's job, refused in both modes
        raise Unsupported(f"{exc}; the per-op mode runs channels-first kernels too") from exc
    except GeneratorRefusal as exc:
        return _reference(node, str(exc))
