"""Storage for the generated code: which array and offset every value lives at.

Views (flatten, reshape, expand_dims, squeeze, and fold_time / unfold_time, which move time into or out of
the batch) share their operand's storage.
An elementwise op whose first operand is dead afterwards (and has its shape)
writes over it. A graph output is computed straight into the caller's output
array when its storage is free for that (not a graph input, not already
another output's); otherwise it is copied there by a last stage. Everything
else lives in the arena, packed by lifetime (best fit, like ``plan.py``):
batched storages in per-sample units (the region of a buffer at offset ``o``
is ``[N*o, N*(o + size))``), unbatched ones in a fixed region after them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from keydnn.backends.numba_cpu.codegen.kinds import BATCH_VIEW_KINDS, INPLACE_KINDS, VIEW_KINDS
from keydnn.backends.numba_cpu.codegen.program import Storage, Val, aligned
from keydnn.ir.graph import Graph

__all__ = ["StoragePlan", "assign_storage", "SLACK"]

#: Elements after every arena buffer: a micro-kernel's last vector loads may run past a value's end.
SLACK = 64

logger = logging.getLogger(__name__)


@dataclass
class StoragePlan:
    per_sample: int  # arena elements per sample
    fixed: int  # arena elements independent of the batch
    outputs: list[tuple[str, tuple[int, ...], bool]]
    copies: list[tuple[int, str, int]] = field(default_factory=list)  # (output index, value, sample size)


def _shape_equal(a: Val, b: Val) -> bool:
    return a.batched == b.batched and a.sample == b.sample and a.fold == b.fold


def assign_storage(graph: Graph, vals: dict[str, Val], views: frozenset = frozenset()) -> StoragePlan:
    """Storage of every value: ``views`` names nodes whose result shares its first operand's storage besides
    the view ops (activations folded into the merge before them)."""
    group: dict[str, int] = {}  # value -> storage group
    storages: list[Storage] = []
    members: dict[int, list[str]] = {}
    defined_at: dict[int, int] = {}
    for i, v in enumerate(graph.inputs):
        val = vals[v.name]
        storages.append(Storage(f"x{i}", val.size, val.batched))
        group[v.name] = i
        members[i] = [v.name]
        defined_at[i] = -1
    n_inputs = len(graph.inputs)
    last_use: dict[str, int] = {}
    for step, node in enumerate(graph.nodes):
        # an unfold_time reads its ``like`` operand for N and T only, never its storage
        read = node.inputs[:1] if node.op.kind == "unfold_time" else node.inputs
        for name in read:
            last_use[name] = step
    end = len(graph.nodes)
    for name in graph.outputs:
        last_use[name] = end

    def group_end(g: int) -> int:
        return max(last_use.get(m, defined_at[g]) for m in members[g])

    for step, node in enumerate(graph.nodes):
        out = node.outputs[0].name
        operands = [i for i in node.inputs if i in group]
        if node.op.kind in VIEW_KINDS or node.op.kind in BATCH_VIEW_KINDS or node.name in views:
            g = group[operands[0]]
        elif (node.op.kind in INPLACE_KINDS and operands and group[operands[0]] >= n_inputs
              and _shape_equal(vals[operands[0]], vals[out]) and group_end(group[operands[0]]) <= step
              and all(group[o] != group[operands[0]] for o in operands[1:])):  # add(r, r): r is read again
            g = group[operands[0]]
        else:
            g = len(storages)
            storages.append(Storage("A", vals[out].per_sample, vals[out].batched))
            members[g] = []
            defined_at[g] = step
        group[out] = g
        members[g].append(out)

    outputs: list[tuple[str, tuple[int, ...], bool]] = []
    copies: list[tuple[int, str, int]] = []
    claimed: set[int] = set()
    for j, name in enumerate(graph.outputs):
        val = vals[name]
        g = group[name]
        if g >= n_inputs and g not in claimed and storages[g].batched == val.batched:
            claimed.add(g)
            storages[g].array = f"y{j}"
            outputs.append(("direct", val.sample, val.batched))
        else:
            outputs.append(("copy", val.sample, val.batched))
            copies.append((j, name, val.size))

    # arena: best-fit reuse by lifetime, batched and fixed storages separately
    per_sample = fixed = 0
    pools: dict[bool, list[list[int]]] = {True: [], False: []}  # [offset, size, free_from_step]
    order = sorted((g for g in range(n_inputs, len(storages)) if storages[g].array == "A"), key=lambda g: defined_at[g])
    for g in order:
        st = storages[g]
        need = st.per_sample
        pool = pools[st.batched]
        free = [b for b in pool if b[2] < defined_at[g] and b[1] - SLACK >= need]
        if free:
            b = min(free, key=lambda b: b[1])
        else:
            size = aligned(need + SLACK)
            if st.batched:
                b = [per_sample, size, 0]
                per_sample += size
            else:
                b = [fixed, size, 0]
                fixed += size
            pool.append(b)
        st.offset = b[0]
        st.fixed_arena = not st.batched
        b[2] = group_end(g)
    for name, val in vals.items():
        if name in group:
            val.storage = storages[group[name]]
    logger.debug("codegen storage: %d arena elements per sample, %d fixed, %d output copies",
                 per_sample, fixed, len(copies))
    return StoragePlan(per_sample, fixed, outputs, copies)
