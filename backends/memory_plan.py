"""The memory plan of a step-by-step executor, shared by numba-cpu's per-op mode and numba-cuda.

Both run a graph as a list of steps, one per node, over numbered slots (graph inputs, constants, node
results). Which results may share memory is a property of that list, not of the device: a view step
lives in its operand's storage; an in-place step writes over its first operand when nothing reads that
storage later, no other operand lives in it (an elementwise kernel that wrote over ``x`` while reading
a reshaped ``x`` at other indices would race on a GPU and read written values on a CPU) and size and
dtype agree; every other step gets a storage of its own. Storages that hold graph outputs are handed
to the caller (one per call); the rest are packed into reusable buffers, best fit first, else growing
the largest free buffer of the dtype, released after the last step that reads any value in them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["StepNeeds", "StoragePlan", "plan_storage"]


@dataclass(frozen=True)
class StepNeeds:
    """What the planner needs of one step: the slots it reads and defines, and how it writes."""

    operands: tuple[int, ...]
    output: int
    allocates: bool  # False: a view of operand 0 (no storage of its own)
    inplace: bool  # may write over operand 0
    size: int  # elements of the result
    dtype: np.dtype


@dataclass(frozen=True)
class StoragePlan:
    """Per step, where its result lives."""

    storage: tuple[int, ...]  # per step: the allocating step whose storage holds the result; -1 external
    outputs: tuple[int, ...]  # the storages holding graph outputs, in step order (a per-call array each)
    arena: tuple[tuple[int, np.dtype], ...]  # (elements, dtype) per reusable buffer
    arena_of: Mapping[int, int]  # storage -> its reusable buffer
    output_of: tuple[int, ...]  # per graph output slot: its index in ``outputs``, or -1 (must be copied)

    def place(self, step: int, allocates: bool) -> tuple[str, int]:
        """("none", -1) for a view, ("output", k) for the k-th output storage, else ("arena", buffer)."""
        if not allocates:
            return "none", -1
        storage = self.storage[step]
        if storage in self.outputs:
            return "output", self.outputs.index(storage)
        return "arena", self.arena_of[storage]


def plan_storage(steps: Sequence[StepNeeds], external: set[int], output_slots: Sequence[int]) -> StoragePlan:
    """Assign every step's result a storage and pack the storages into buffers (see the module docstring)."""
    n_steps = len(steps)
    last_use: dict[int, int] = {}
    for i, step in enumerate(steps):
        for slot in step.operands:
            last_use[slot] = i
    for slot in output_slots:
        last_use[slot] = n_steps

    storage_of: dict[int, int] = {}  # slot -> storage; inputs and constants are external (-1)
    end: dict[int, int] = {}  # storage -> last step reading any value that lives in it
    for i, step in enumerate(steps):
        src = -1
        if step.operands and step.operands[0] not in external:
            src = storage_of.get(step.operands[0], -1)
        if not step.allocates:
            storage = src
        elif (step.inplace and src >= 0 and end[src] <= i
              and all(storage_of.get(o, -1) != src for o in step.operands[1:] if o not in external)
              and steps[src].size == step.size and steps[src].dtype == step.dtype):
            storage = src
        else:
            storage = i
        storage_of[step.output] = storage
        if storage >= 0:
            end[storage] = max(end.get(storage, i), last_use.get(step.output, i))

    outputs = sorted({storage_of[s] for s in output_slots if storage_of.get(s, -1) >= 0})
    released_after: dict[int, list[int]] = {}
    for storage, e in end.items():
        released_after.setdefault(e, []).append(storage)
    arena: list[list] = []  # [elements, dtype] per reusable buffer
    arena_of: dict[int, int] = {}
    free: list[int] = []
    output_set = set(outputs)
    for i, step in enumerate(steps):
        if storage_of[step.output] == i and i not in output_set:
            candidates = [b for b in free if arena[b][1] == step.dtype]
            if candidates:  # best fit; else grow the largest free buffer of the dtype
                fits = [b for b in candidates if arena[b][0] >= step.size]
                b = min(fits, key=lambda k: arena[k][0]) if fits else max(candidates, key=lambda k: arena[k][0])
                free.remove(b)
                arena[b][0] = max(arena[b][0], step.size)
            else:
                b = len(arena)
                arena.append([step.size, step.dtype])
            arena_of[i] = b
        free.extend(arena_of[s] for s in released_after.get(i, ()) if s in arena_of)

    index = {s: k for k, s in enumerate(outputs)}
    return StoragePlan(
        storage=tuple(storage_of[step.output] for step in steps), outputs=tuple(outputs),
        arena=tuple((n, d) for n, d in arena), arena_of=arena_of,
        output_of=tuple(index.get(storage_of.get(s, -1), -1) for s in output_slots))
