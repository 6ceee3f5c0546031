"""The text of a generated module: the stages of ``entry``, with the thread protocol around them.

Each stage is a work-claiming loop. A stage's items are cut into ``min(nthr,
OWNERS)`` contiguous ranges, each with its own claim counter on its own cache
line: a thread claims the items of its own range first (``it = lo +
atomic_add(S, claim + 8 * owner, 1)``), then those left in the others'. So
thread t runs the same part of every stage (at batch 1: the same rows of an
image, stage after stage, whose data is then in its own cache, not the other
core's) and claims on a line no other thread writes, while a thread that is
slow or never shows up only has its items taken by the others. A thread adds
the number of items it ran to the stage's done counter once, when no item is
left to claim, and leaves the stage when every item is done. A thread only
ever waits for items another thread has already claimed (and is running), so
the scheme cannot deadlock however many threads actually show up, and one
thread alone simply runs every item. Counters of different stages sit on
different cache lines.

Threads: the caller runs ``entry(tid=0, ...)``; helper threads run the same
function with ``tid > 0`` for the same call (generation ``gen``). The caller
resets the counters and publishes ``gen``; a helper counts itself ``active``,
joins only if the call is still open and is the one it was sent for, and
leaves; the caller closes the call when its stages are done and waits until no
helper is active, so a late helper never touches a finished call's buffers.
State slots: 0 closed, 8 active, 16 generation, then per stage ``OWNERS`` claim lines and a done line
(``stage_slots``).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from keydnn.backends.numba_cpu.codegen.storage import StoragePlan
    from keydnn.backends.numba_cpu.codegen.program import Stage, _Generator
    from keydnn.ir.graph import Graph

__all__ = ["render", "SOURCE_VERSION", "STATE_STRIDE", "OWNERS", "state_size", "stage_slots", "entry_c_signature"]

logger = logging.getLogger(__name__)

#: Bumped whenever the shape of generated code changes (part of the cache key via the text anyway).
SOURCE_VERSION = 4


def shared_stages() -> bool:
    """Stages as calls of shared, separately compiled stage functions (``cg_stagefn``); ``KEYDNN_SHARED_STAGES=0``
    renders every stage inline in ``entry`` as before (one function per graph: slow to compile for large graphs)."""
    return os.environ.get("KEYDNN_SHARED_STAGES", "1").strip().lower() not in ("0", "false", "no", "off")
#: Item ranges of a stage with their own claim counter (threads beyond this many share them).
OWNERS = 4
#: int64 slots per stage in the state array: ``OWNERS`` claim counters, then the done counter, each on its own
#: cache line (8 slots).
STATE_STRIDE = 8 * (OWNERS + 1)

_CONTROL = 2  # state slots (in STATE_STRIDE units) before the first stage's counters


def stage_slots(k: int) -> tuple[int, int]:
    """State slots of stage ``k``'s first claim counter and of its done counter. With ``KEYDNN_CPU_PROFILE``
    the three slots after the first claim counter accumulate busy cycles of threads 0, 1 and the rest, the
    three after the done counter their waiting cycles."""
    claim = (k + _CONTROL) * STATE_STRIDE
    return claim, claim + STATE_STRIDE - 8


def state_size(n_stages: int) -> int:
    return (max(1, n_stages) + _CONTROL) * STATE_STRIDE


def _args(n_in: int, n_out: int) -> str:
    return ", ".join([f"x{i}" for i in range(n_in)] + [f"y{j}" for j in range(n_out)] + ["W", "D", "T", "A", "S", "F"])


def _stage(k: int, st: "Stage", profile: bool, uniform: bool = False) -> list[str]:
    """The lines of stage ``k``. ``uniform``: a stage of one block computes ``blocks`` with the same
    expression as a stage of several (it evaluates to 1), so that both share one stage function."""
    claim, done = stage_slots(k)
    lines = [f"    # stage {k}: {st.description}"]
    if st.fold > 1:  # time folded into the batch: the stage's N counts rows (cg_program.Val.fold), put back after
        lines.append(f"    N = N * {st.fold}")
    if profile:
        lines.append("    t_start = cycles()")
    if st.items is not None:
        lines += [f"    {p}" for p in st.setup]
        lines.append(f"    total = {st.items}")
        prelude: list[str] = []
    else:
        rows = "N" if st.batched else "1"
        lines += [f"    {p}" for p in st.setup]
        if st.max_blocks <= 1 and not uniform:
            lines.append("    blocks = 1")
        else:
            if st.batched:
                lines.append(f"    blocks = 1 if nthr == 1 else max(1, min({max(1, st.max_blocks)}, (4 * nthr + N - 1) // N))")
            else:
                lines.append(f"    blocks = 1 if nthr == 1 else min({max(1, st.max_blocks)}, 4 * nthr)")
            # a whole number of items per thread: 3 blocks on 2 threads take as long as 4, 2 as long as 2 (each
            # larger, but one thread no longer waits for the other's third)
            lines.append(f"    while blocks > 1 and {rows} * blocks > nthr and ({rows} * blocks) % nthr != 0:")
            lines.append("        blocks -= 1")
        lines.append(f"    total = {rows} * blocks")
        prelude = ["n = it // blocks", "blk = it - n * blocks",
                   f"lo = blk * {st.split} // blocks", f"hi = (blk + 1) * {st.split} // blocks"]
    lines += [
        f"    owners = min(nthr, {OWNERS})",
        "    mine = 0",
        "    for k_own in range(owners):",
        "        own = (tid + k_own) % owners",
        "        own_hi = (own + 1) * total // owners",
        "        while True:",
        f"            it = own * total // owners + atomic_add(S, {claim} + 8 * own, 1)",
        "            if it >= own_hi:",
        "                break",
        "            mine += 1",
    ]
    lines += [f"            {p}" for p in prelude]
    lines += [f"            {b}" for b in st.body]
    lines += [
        "    if mine > 0:",
        f"        atomic_add(S, {done}, mine)",
    ]
    if profile:  # busy cycles of this thread in slot claim+1+tid, waiting cycles in claim+4+tid
        lines += ["    t_mid = cycles()", f"    S[{claim + 1} + min(tid, 2)] += t_mid - t_start"]
    lines += [f"    wait_at_least(S, {done}, total, F[0])"]
    if profile:
        lines += [f"    S[{done + 1} + min(tid, 2)] += cycles() - t_mid"]
    if st.fold > 1:
        lines.append(f"    N = N // {st.fold}")
    return lines


def _shared_stages(gen: "_Generator") -> list[str]:
    """The stages as calls of shared stage functions (``cg_stagefn``), runs of them as one loop over a table
    in ``T`` (thunk slot, offset of the stage's int parameters in ``T``, of its float parameters in ``D``);
    a stage that cannot be templated stays inline. The array addresses the functions read go into the state
    array after the stage counters (``gen.state_extra`` slots), written by thread 0 before it opens the call."""
    from keydnn.backends.numba_cpu.codegen.stagefn import template

    import numpy as np

    names = sorted(gen.arrays | {"T", "D", "S", "F"})
    slots = {name: i for i, name in enumerate(names)}
    base = state_size(len(gen.stages))
    gen.state_extra = len(names)
    rows: list[Optional[tuple[int, int, int]]] = []
    for k, st in enumerate(gen.stages):
        text = _stage(k, st, False, uniform=True)[1:]
        tpl = template(text, slots)
        if tpl is None:
            gen.stage_functions.append(None)
            rows.append(None)
            continue
        qi = gen.add_blob(gen.t_parts, "t_len", np.asarray(tpl.ints or [0], dtype=np.int64))
        qf = gen.add_blob(gen.d_parts, "d_len", np.asarray(tpl.floats or [0.0], dtype=np.float64))
        gen.stage_functions.append(tpl.name)
        rows.append((gen.thunk_index(tpl.name), qi, qf))
    gen.arrays |= {"T", "D", "S", "F"}
    gen.publish = [f"S[{base + i}] = p_{name}" for name, i in slots.items()]
    lines = []
    table = [v for row in rows if row is not None for v in row]
    start = gen.add_blob(gen.t_parts, "t_len", np.asarray(table or [0], dtype=np.int64))
    k, r = 0, 0
    while k < len(rows):
        if rows[k] is None:
            lines += _stage(k, gen.stages[k], False)
            k += 1
            continue
        end = k
        while end < len(rows) and rows[end] is not None:
            end += 1
        lines += [
            f"    # stages {k}..{end - 1}: {'; '.join(st.description for st in gen.stages[k:end])[:2000]}",
            f"    for k_stage in range({r}, {r + end - k}):",
            f"        k_row = {start} + 3 * k_stage",
            f"        fcall(F[T[k_row]], tid, nthr, N, AF, SC, p_S, p_F, p_T + 8 * T[k_row + 1], p_D + 8 * T[k_row + 2], "
            f"p_S + {8 * base})",
        ]
        r += end - k
        k = end
    return lines


def render(graph: "Graph", gen: "_Generator", plan: "StoragePlan", *, cache: bool = True,
           profile: bool = False, shared: Optional[bool] = None) -> str:
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    args = _args(n_in, n_out)
    gen.publish = []
    if profile or not (shared_stages() if shared is None else shared):
        stage_lines = [ln for k, st in enumerate(gen.stages) for ln in _stage(k, st, profile)]
    else:
        stage_lines = _shared_stages(gen)
    shapes = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [
        f'"""keydnn numba-cpu code for graph {graph.name!r} ({shapes}); generated, do not edit."""',
        "",
        "import numba",
        "import numpy as np",
        "",
        "from keydnn.backends.numba_cpu.kernels.sync import wait_at_least, wait_at_most",
        "from keydnn.backends.numba_cpu.kernels.simd import atomic_add, atomic_load, atomic_store, cycles, farray, fcall",
        "",
        f'OPTIONS = dict(cache={cache!r}, nogil=True, error_model="numpy", boundscheck=False)',
        f"SOURCE_VERSION = {SOURCE_VERSION}",
        f"N_STAGES = {len(gen.stages)}",
        f"PROFILE = {profile!r}",
        f"N_INPUTS, N_OUTPUTS = {n_in}, {n_out}",
        f"THUNKS = {tuple(gen.thunks)!r}",
        "",
        "",
        "@numba.njit(**OPTIONS)",
        f"def entry(tid, nthr, gen, N, {args}):",
    ]
    lines += [f"    p_{name} = {name}.ctypes.data" for name in sorted(gen.arrays)]
    lines += [
        "    if tid == 0:",
        f"        for i in range({_CONTROL * STATE_STRIDE}, {state_size(len(gen.stages))}):",
        "            if (i % 8) == 0 or not PROFILE:",
        "                S[i] = 0",
        "        atomic_store(S, 0, 0)",
        *[f"        {p}" for p in gen.publish],
        "        atomic_store(S, 16, gen)",
        "    else:",
        "        atomic_add(S, 8, 1)",
        "        wait_at_least(S, 16, gen, F[0])",
        "        if atomic_load(S, 16) != gen or atomic_load(S, 0) != 0:",
        "            atomic_add(S, 8, -1)",
        "            return 0",
    ]
    lines += [
        f"    AF = N * {plan.per_sample}",
        f"    SC = AF + {plan.fixed} + tid * {gen.scratch}",
    ]
    lines += stage_lines
    lines += [
        "    if tid == 0:",
        "        atomic_store(S, 0, 1)",
        "        wait_at_most(S, 8, 0, F[0])",
        "    else:",
        "        atomic_add(S, 8, -1)",
        "    return 0",
        "",
        "",
    ]
    dt = f"np.{gen.dtype.name}"
    kinds = [dt] * (n_in + n_out) + [dt, "np.float64", "np.int64", dt, "np.int64", "np.int64"]
    views = ", ".join(f"farray(P[{i}], {k})" for i, k in enumerate(kinds))
    lines += [
        "def entry_c(tid, nthr, gen, N, pP):",
        '    """entry with every array passed as an address, read from the int64 array at ``pP`` (x..., y..., W, D,',
        '    T, A, S, F): one C signature for every graph (made a C function for prebuilt libraries and the',
        '    native worker pool)."""',
        "    P = farray(pP, np.int64)",
        f"    return entry(tid, nthr, gen, N, {views})",
        "",
    ]
    return "\n".join(lines)


def entry_c_signature(module) -> str:
    """The C signature of a generated module's ``entry_c`` (all int64, the same for every graph)."""
    n = 5
    return "int64(" + ", ".join(["int64"] * n) + ")"
