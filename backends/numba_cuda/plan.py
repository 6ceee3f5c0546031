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
from typing import Any, Optional

import numpy as np

from keydnn.backends.kernel_table import resolve_shapes
from keydnn.backends.numba_cuda.lowering import LoweredOp, Prepared, Shape
from keydnn.ir.graph import Graph

__all__ = ["Step", "Plan", "Placement", "ShapePlan", "plan_shapes", "resolve_shapes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One node: its lowered op, the slots it reads, the slot it defines."""

    node: str
    kind: str
    op: LoweredOp
    operands: tuple[int, ...]
    output: int


@dataclass(frozen=True)
class Plan:
    """Slots are numbered: graph inputs first, then constants, then node outputs in order."""

    graph: Graph
    steps: tuple[Step, ...]
    slot_names: tuple[str, ...]
    input_slots: tuple[int, ...]
    output_slots: tuple[int, ...]
    template: tuple[Optional[Any], ...]  # constants as flat device arrays, None elsewhere

    def __str__(self) -> str:
        lines = []
        for s in self.steps:
            args = ", ".join(f"%{self.slot_names[i]}" for i in s.operands)
            lines.append(f"%{self.slot_names[s.output]} = {s.op.description}({args})  // {s.node}")
        return "\n".join(lines)


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

    n_steps = len(plan.steps)
    last_use: dict[int, int] = {}
    for i, step in enumerate(plan.steps):
        for slot in step.operands:
            last_use[slot] = i
    for slot in plan.output_slots:
        last_use[slot] = n_steps
    storage_of: dict[int, int] = {}  # slot -> storage (the step that allocated it); -1: external
    end: dict[int, int] = {}  # storage -> last step reading any value that lives in it
    for i, step in enumerate(plan.steps):
        src = storage_of.get(step.operands[0], -1) if step.operands else -1
        if not step.op.allocates:
            storage = src
        elif (step.op.inplace and src >= 0 and end[src] <= i and dtypes[src] == dtypes[i]
              and math.prod(shapes[src]) == math.prod(shapes[i])):
            storage = src
        else:
            storage = i
        storage_of[step.output] = storage
        if storage >= 0:
            end[storage] = max(end.get(storage, i), last_use.get(step.output, i))

    outputs = sorted({storage_of[s] for s in plan.output_slots if storage_of.get(s, -1) >= 0})
    output_index = {s: k for k, s in enumerate(outputs)}
    released: dict[int, list[int]] = {}
    for storage, e in end.items():
        released.setdefault(e, []).append(storage)
    arena: list[list] = []  # [elements, dtype]
    arena_of: dict[int, int] = {}
    free: list[int] = []
    for i in range(n_steps):
        if storage_of[plan.steps[i].output] == i and i not in output_index:
            need = math.prod(shapes[i])
            fits = [b for b in free if arena[b][1] == dtypes[i] and arena[b][0] >= need]
            grow = [b for b in free if arena[b][1] == dtypes[i]]
            if fits or grow:  # best fit, else grow the largest free buffer of the dtype
                b = min(fits, key=lambda k: arena[k][0]) if fits else max(grow, key=lambda k: arena[k][0])
                free.remove(b)
                arena[b][0] = max(arena[b][0], need)
            else:
                b = len(arena)
                arena.append([need, dtypes[i]])
            arena_of[i] = b
        free.extend(arena_of[s] for s in released.get(i, ()) if s in arena_of)

    placements = []
    for i, step in enumerate(plan.steps):
        storage, size = storage_of[step.output], math.prod(shapes[i])
        if not step.op.allocates:
            placements.append(Placement("view", -1, size))
        elif storage in output_index:
            placements.append(Placement("output", output_index[storage], size))
        else:
            placements.append(Placement("arena", arena_of[storage], size))
    logger.debug("cuda memory plan for %s: %d arena buffers (%d elements), %d outputs",
                 input_shapes, len(arena), sum(n for n, _ in arena), len(outputs))
    return ShapePlan(
        shapes=tuple(shapes), prepared=prepared, placements=tuple(placements),
        arena=tuple((n, d) for n, d in arena),
        output_storage=tuple((math.prod(shapes[s]), dtypes[s]) for s in outputs),
        output_of=tuple(output_index.get(storage_of.get(s, -1), -1) for s in plan.output_slots),
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
