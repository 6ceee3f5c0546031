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
from keydnn.backends.numba_cpu.ops.lowering import LoweredOp
from keydnn.ir.graph import Graph

__all__ = ["Step", "Plan", "Placement", "MemoryLayout", "plan_memory", "resolve_shapes", "PARALLEL_MIN_WORK"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One node: its bound kernel, the slots it reads, the slot it defines."""

    node: str
    kind: str
    op: LoweredOp
    operands: tuple[int, ...]
    output: int
    dtype: np.dtype


@dataclass(frozen=True)
class Plan:
    """Slots are numbered: graph inputs first, then constants, then node outputs in order."""

    graph: Graph
    steps: tuple[Step, ...]
    slot_names: tuple[str, ...]
    input_slots: tuple[int, ...]
    output_slots: tuple[int, ...]
    template: tuple[Optional[np.ndarray], ...]  # constants prefilled, None elsewhere

    def __str__(self) -> str:
        lines = []
        for s in self.steps:
            args = ", ".join(f"%{self.slot_names[i]}" for i in s.operands)
            lines.append(f"%{self.slot_names[s.output]} = {s.op.description}({args})  // {s.node}")
        return "\n".join(lines)


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
    """Assign storages (views and in-place ops share their operand's) and pack them into buffers."""
    n_steps = len(plan.steps)
    external = set(plan.input_slots) | {i for i, a in enumerate(plan.template) if a is not None}
    last_use: dict[int, int] = {}
    for i, step in enumerate(plan.steps):
        for slot in step.operands:
            last_use[slot] = i
    for slot in plan.output_slots:
        last_use[slot] = n_steps

    storage_of: dict[int, int] = {}  # slot -> storage (index of the step that allocated it), -1 external
    end: dict[int, int] = {}  # storage -> last step that reads any value living in it
    for i, step in enumerate(plan.steps):
        src = step.operands[0] if step.operands else None
        src_storage = -1 if src is None or src in external else storage_of[src]
        if not step.op.allocates:
            storage = src_storage
        elif (step.op.inplace and src_storage >= 0 and end[src_storage] <= i
              and all(o in external or storage_of[o] != src_storage for o in step.operands[1:])
              and math.prod(shapes[i]) == math.prod(shapes[src_storage])
              and _dtype(plan, i) == _dtype(plan, src_storage)):
            storage = src_storage
        else:
            storage = i
        storage_of[step.output] = storage
        if storage >= 0:
            end[storage] = max(end.get(storage, i), last_use.get(step.output, i))

    fresh_storages = sorted({storage_of[s] for s in plan.output_slots if storage_of.get(s, -1) >= 0})
    fresh_index = {s: k for k, s in enumerate(fresh_storages)}
    released_after: dict[int, list[int]] = {}
    for storage, e in end.items():
        released_after.setdefault(e, []).append(storage)

    arena: list[list] = []  # [elements, dtype] per reusable buffer
    arena_of: dict[int, int] = {}
    free: list[int] = []
    for i in range(n_steps):
        if storage_of[plan.steps[i].output] == i and i not in fresh_index:
            need, dtype = math.prod(shapes[i]), _dtype(plan, i)
            candidates = [b for b in free if arena[b][1] == dtype]
            if candidates:  # best fit; else grow the largest free buffer
                fits = [b for b in candidates if arena[b][0] >= need]
                b = min(fits, key=lambda k: arena[k][0]) if fits else max(candidates, key=lambda k: arena[k][0])
                free.remove(b)
                arena[b][0] = max(arena[b][0], need)
            else:
                b = len(arena)
                arena.append([need, dtype])
            arena_of[i] = b
        free.extend(arena_of[s] for s in released_after.get(i, ()) if s in arena_of)

    placements = []
    for i, step in enumerate(plan.steps):
        storage, dtype = storage_of[step.output], _dtype(plan, i)
        serial = math.prod(shapes[i]) * step.op.work_per_element < PARALLEL_MIN_WORK
        if not step.op.allocates:
            placements.append(Placement("none", -1, shapes[i], dtype, serial))
        elif storage in fresh_index:
            placements.append(Placement("fresh", fresh_index[storage], shapes[i], dtype, serial))
        else:
            placements.append(Placement("arena", arena_of[storage], shapes[i], dtype, serial))
    fresh = tuple((math.prod(shapes[s]), _dtype(plan, s)) for s in fresh_storages)
    output_fresh = tuple(fresh_index.get(storage_of.get(s, -1), -1) for s in plan.output_slots)
    logger.debug("memory plan: %d arena buffers (%d elements), %d fresh outputs",
                 len(arena), sum(n for n, _ in arena), len(fresh))
    return MemoryLayout(tuple(placements), tuple((n, d) for n, d in arena), fresh, output_fresh)


def _dtype(plan: Plan, step_index: int) -> np.dtype:
    return plan.steps[step_index].dtype
