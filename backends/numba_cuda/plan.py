"""The execution plan: steps built once per graph; launches and device memory once per input shape.

Mirrors ``keydnn.backends.numba_cpu.ops.plan``. A ``Plan`` is the ordered list of
lowered steps with operand and result slots (graph inputs, then constants,
then node outputs). A ``ShapePlan`` binds it to concrete input shapes: every
step prepared (grid, geometry, split-K), and every result given a storage:

* ``view``: the step writes nothing (reshape-like); it shares operand 0's storage;
* ``arena``: a reusable device buffer, shared by steps whose values are never
  alive at the same time (greedy best fit over the liveness intervals);
* ``output``: the storage of a graph output, kept apart so that a device-array
  caller can be handed it without a copy and without a later call
  overwriting it.

Elementwise steps may write in place over an operand that dies with them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from keydnn.backends.kernel_table import resolve_shapes
from keydnn.backends.memory_plan import StepNeeds, plan_storage
from keydnn.backends.step_list import Plan, Step  # noqa: F401  (re-exported)
from keydnn.backends.numba_cuda.lowering import Prepared, Shape

__all__ = ["Step", "Plan", "Placement", "ShapePlan", "plan_shapes", "resolve_shapes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where one step writes: ``kind`` "arena" (index = buffer), "output" (index = output storage) or "view"."""

    kind: str
    index: int
    size: int


@dataclass(frozen=True)
class ShapePlan:
    """Everything that depends on the concrete input shapes."""

    shapes: tuple[Shape, ...]  # per step
    prepared: tuple[Prepared, ...]  # per step
    placements: tuple[Placement, ...]  # per step
    arena: tuple[tuple[int, np.dtype], ...]  # (elements, dtype) per reusable buffer
    output_storage: tuple[tuple[int, np.dtype], ...]  # (elements, dtype) per output storage
    output_of: tuple[int, ...]  # per graph output: its output storage, or -1 (a view of an input: copy)
    output_shapes: tuple[Shape, ...]
    scratch: tuple[tuple[int, np.dtype], ...]  # per dtype: (elements, dtype) of the largest scratch a step needs


def plan_shapes(plan: Plan, input_shapes: tuple[Shape, ...]) -> ShapePlan:
    """Prepare every step for these shapes and pack result storages into device buffers."""
    graph = plan.graph
    shapes = resolve_shapes(graph, input_shapes)
    slot_shape: dict[int, Shape] = dict(zip(plan.input_slots, input_shapes))
    slot_of = {name: i for i, name in enumerate(plan.slot_names)}
    slot_shape.update({slot_of[c.name]: tuple(c.type.shape) for c in graph.constants})
    for step, shape in zip(plan.steps, shapes):
        slot_shape[step.output] = shape
    prepared = tuple(step.op.prepare(tuple(slot_shape[s] for s in step.operands), shape)
                     for step, shape in zip(plan.steps, shapes))
    dtypes = [node.outputs[0].type.np_dtype for node in graph.nodes]

    external = set(plan.input_slots) | {slot_of[c.name] for c in graph.constants}
    needs = [StepNeeds(step.operands, step.output, step.op.allocates, step.op.inplace, math.prod(shape), dtype)
             for step, shape, dtype in zip(plan.steps, shapes, dtypes)]
    storage = plan_storage(needs, external, plan.output_slots)
    placements = []
    for i, step in enumerate(plan.steps):
        kind, index = storage.place(i, step.op.allocates)
        placements.append(Placement("view" if kind == "none" else kind, index, needs[i].size))
    logger.debug("cuda memory plan for %s: %d arena buffers (%d elements), %d outputs",
                 input_shapes, len(storage.arena), sum(n for n, _ in storage.arena), len(storage.outputs))
    return ShapePlan(
        shapes=tuple(shapes), prepared=prepared, placements=tuple(placements), arena=storage.arena,
        output_storage=tuple((needs[s].size, needs[s].dtype) for s in storage.outputs),
        output_of=storage.output_of,
        output_shapes=tuple(slot_shape[s] for s in plan.output_slots),
        scratch=tuple(_scratch_sizes(prepared, dtypes)),
    )


def _scratch_sizes(prepared: tuple[Prepared, ...], dtypes: list[np.dtype]) -> list[tuple[int, np.dtype]]:
    """Steps run one after another on one stream, so one scratch buffer per dtype serves them all."""
    need: dict[np.dtype, int] = {}
    for p, d in zip(prepared, dtypes):
        if p.scratch:
            need[d] = max(need.get(d, 0), p.scratch)
    return [(n, d) for d, n in need.items()]
