"""The text of a generated module: the stages of ``entry``, with the thread protocol around them.

Each stage is a work-claiming loop: ``it = atomic_add(S, claim, 1)`` hands out
item numbers until the stage's total is reached, each finished item bumps a
done counter, and a thread leaves the stage when every item is done. A thread
only ever waits for items another thread has already claimed (and is
running), so the scheme cannot deadlock however many threads actually show
up, and one thread alone simply runs every item. Counters of different stages
sit on different cache lines.

Threads: the caller runs ``entry(tid=0, ...)``; helper threads run the same
function with ``tid > 0`` for the same call (generation ``gen``). The caller
resets the counters and publishes ``gen``; a helper counts itself ``active``,
joins only if the call is still open and is the one it was sent for, and
leaves; the caller closes the call when its stages are done and waits until no
helper is active, so a late helper never touches a finished call's buffers.
State slots: 0 closed, 8 active, 16 generation, then two per stage.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from keydnn.backends.numba_cpu.cg_plan import StoragePlan
    from keydnn.backends.numba_cpu.codegen import Stage, _Generator
    from keydnn.ir.graph import Graph

__all__ = ["render", "SOURCE_VERSION", "STATE_STRIDE", "state_size", "entry_c_signature"]

logger = logging.getLogger(__name__)

#: Bumped whenever the shape of generated code changes (part of the cache key via the text anyway).
SOURCE_VERSION = 2
#: int64 slots per stage in the state array (claim counter, done counter, each on its own cache line).
STATE_STRIDE = 16

_CONTROL = 2  # state slots (in STATE_STRIDE units) before the first stage's counters


def state_size(n_stages: int) -> int:
    return (max(1, n_stages) + _CONTROL) * STATE_STRIDE


def _args(n_in: int, n_out: int) -> str:
    return ", ".join([f"x{i}" for i in range(n_in)] + [f"y{j}" for j in range(n_out)] + ["W", "D", "T", "A", "S", "F"])


def _stage(k: int, st: "Stage", profile: bool) -> list[str]:
    claim = (k + _CONTROL) * STATE_STRIDE
    done = claim + STATE_STRIDE // 2
    lines = [f"    # stage {k}: {st.description}"]
    if profile:
        lines.append("    t_start = cycles()")
    if st.items is not None:
        lines += [f"    {p}" for p in st.setup]
        lines.append(f"    total = {st.items}")
        prelude: list[str] = []
    else:
        rows = "N" if st.batched else "1"
        lines += [f"    {p}" for p in st.setup]
        if st.max_blocks <= 1:
            lines.append("    blocks = 1")
        elif st.batched:
            lines.append(f"    blocks = 1 if nthr == 1 else max(1, min({st.max_blocks}, (4 * nthr + N - 1) // N))")
        else:
            lines.append(f"    blocks = 1 if nthr == 1 else min({st.max_blocks}, 4 * nthr)")
        lines.append(f"    total = {rows} * blocks")
        prelude = ["n = it // blocks", "blk = it - n * blocks",
                   f"lo = blk * {st.split} // blocks", f"hi = (blk + 1) * {st.split} // blocks"]
    lines += [
        "    while True:",
        f"        it = atomic_add(S, {claim}, 1)",
        "        if it >= total:",
        "            break",
    ]
    lines += [f"        {p}" for p in prelude]
    lines += [f"        {b}" for b in st.body]
    lines += [
        f"        atomic_add(S, {done}, 1)",
    ]
    if profile:  # busy cycles of this thread in slot claim+1+tid, waiting cycles in claim+4+tid
        lines += ["    t_mid = cycles()", f"    S[{claim + 1} + min(tid, 2)] += t_mid - t_start"]
    lines += [f"    wait_at_least(S, {done}, total, F[0])"]
    if profile:
        lines += [f"    S[{done + 1} + min(tid, 2)] += cycles() - t_mid"]
    return lines


def render(graph: "Graph", gen: "_Generator", plan: "StoragePlan", *, cache: bool = True,
           profile: bool = False) -> str:
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    args = _args(n_in, n_out)
    shapes = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [
        f'"""keydnn numba-cpu code for graph {graph.name!r} ({shapes}); generated, do not edit."""',
        "",
        "import numba",
        "import numpy as np",
        "",
        "from keydnn.backends.numba_cpu.cg_sync import wait_at_least, wait_at_most",
        "from keydnn.backends.numba_cpu.simd import atomic_add, atomic_load, atomic_store, cycles, farray, fcall",
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
        "    if tid == 0:",
        f"        for i in range({_CONTROL * STATE_STRIDE}, {state_size(len(gen.stages))}):",
        "            if (i % 8) == 0 or not PROFILE:",
        "                S[i] = 0",
        "        atomic_store(S, 0, 0)",
        "        atomic_store(S, 16, gen)",
        "    else:",
        "        atomic_add(S, 8, 1)",
        "        wait_at_least(S, 16, gen, F[0])",
        "        if atomic_load(S, 16) != gen or atomic_load(S, 0) != 0:",
        "            atomic_add(S, 8, -1)",
        "            return 0",
    ]
    for name in sorted(gen.arrays):
        lines.append(f"    p_{name} = {name}.ctypes.data")
    lines += [
        f"    AF = N * {plan.per_sample}",
        f"    SC = AF + {plan.fixed} + tid * {gen.scratch}",
    ]
    for k, st in enumerate(gen.stages):
        lines += _stage(k, st, profile)
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
