"""The execution plan: steps built once per graph, buffer layouts built once per input shape.

A ``Plan`` is the per-op mode's small IR — an ordered list of steps, each a
bound step (a one-node generated program, a view, a per-op-only kernel) with
operand and result slots. Executing it is a straight loop.

A ``MemoryLayout`` says, for one set of concrete input shapes, where each
step writes: a view into a reusable arena buffer (buffers are shared by steps
whose values are never alive at the same time), a fresh per-call array (the
storage of graph outputs, so callers can keep them), or nowhere (views).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from keydnn.backends.kernel_table import resolve_shapes
from keydnn.backends.memory_plan import StepNeeds, plan_storage
from keydnn.backends.step_list import Plan, Step  # noqa: F401  (re-exported)

__all__ = ["Step", "Plan", "Placement", "MemoryLayout", "plan_memory", "resolve_shapes", "PARALLEL_MIN_WORK"]

logger = logging.getLogger(__name__)


#: Steps estimated below this much work run on the calling thread only.
PARALLEL_MIN_WORK = 1 << 18


@dataclass(frozen=True)
class Placement:
    """Where one step writes: ``kind`` is "arena" (index = buffer), "fresh" (index = storage) or "none";
    ``serial`` steps are too small to be worth waking the thread pool."""

    kind: str
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    serial: bool = True


@dataclass(frozen=True)
class MemoryLayout:
    placements: tuple[Placement, ...]
    arena: tuple[tuple[int, np.dtype], ...]  # (elements, dtype) of each reusable buffer
    fresh: tuple[tuple[int, np.dtype], ...]  # (elements, dtype) of each per-call storage
    output_fresh: tuple[int, ...]  # per graph output: its fresh storage, or -1 (must be copied)

    def allocate_arena(self) -> list[Optional[np.ndarray]]:
        """This thread's step buffers: views into newly allocated arena arrays."""
        bufs = [np.empty(n, dtype=d) for n, d in self.arena]
        return [bufs[p.index][: math.prod(p.shape)].reshape(p.shape) if p.kind == "arena" else None
                for p in self.placements]


def plan_memory(plan: Plan, shapes: list[tuple[int, ...]]) -> MemoryLayout:
    """Assign storages (views and in-place ops share their operand's) and pack them into buffers
    (``backends.memory_plan``, the planner numba-cuda uses too)."""
    external = set(plan.input_slots) | {i for i, a in enumerate(plan.template) if a is not None}
    needs = [StepNeeds(step.operands, step.output, step.op.allocates, step.op.inplace, math.prod(shape), step.dtype)
             for step, shape in zip(plan.steps, shapes)]
    storage = plan_storage(needs, external, plan.output_slots)
    placements = []
    for i, step in enumerate(plan.steps):
        kind, index = storage.place(i, step.op.allocates)
        serial = math.prod(shapes[i]) * step.op.work_per_element < PARALLEL_MIN_WORK
        placements.append(Placement("fresh" if kind == "output" else kind, index, shapes[i], step.dtype, serial))
    fresh = tuple((needs[s].size, needs[s].dtype) for s in storage.outputs)
    logger.debug("memory plan: %d arena buffers (%d elements), %d fresh outputs",
                 len(storage.arena), sum(n for n, _ in storage.arena), len(fresh))
    return MemoryLayout(tuple(placements), storage.arena, fresh, storage.output_of)
