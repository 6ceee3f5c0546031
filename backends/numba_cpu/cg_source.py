"""The text of a generated module: imports, ``body`` (the stages) and ``entry``.

Each stage is a work-claiming loop: ``it = atomic_add(S, claim, 1)`` hands out
item numbers until the stage's total is reached, each finished item bumps a
done counter, and a thread leaves the stage when every item is done. A thread
only ever waits for items another thread has already claimed (and is
running), so the scheme cannot deadlock however many threads actually run,
and one thread alone simply runs every item. Counters of different stages sit
on different cache lines.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from keydnn.backends.numba_cpu.cg_plan import StoragePlan
    from keydnn.backends.numba_cpu.codegen import Stage, _Generator
    from keydnn.ir.graph import Graph

__all__ = ["render", "SOURCE_VERSION", "STATE_STRIDE", "state_size"]

logger = logging.getLogger(__name__)

#: Bumped whenever the shape of generated code changes (part of the cache key via the text anyway).
SOURCE_VERSION = 1
#: int64 slots per stage in the state array (claim counter, done counter, each on its own cache line).
STATE_STRIDE = 16

_HELPER_MODULES = {
    "keydnn.backends.numba_cpu.cg_kernels": (
        "im2col_panel", "act_copy", "copy_flat", "max_pool_planes", "avg_pool_planes", "mean_rows_flat",
        "max_rows_flat", "max_cols_flat", "softmax_flat", "affine_flat", "prelu_flat", "pad_flat", "crop_flat",
        "upsample_flat", "transpose_flat", "merge_flat", "conv_direct_planes", "add_bias_act_planes", "concat_rows",
    ),
    "keydnn.backends.numba_cpu.cg_fast": ("max_pool_2x2_planes", "gemv_panels", "dense_rows"),
}


def state_size(n_stages: int) -> int:
    return max(1, n_stages) * STATE_STRIDE


def _args(n_in: int, n_out: int) -> str:
    return ", ".join([f"x{i}" for i in range(n_in)] + [f"y{j}" for j in range(n_out)] + ["W", "D", "T", "A", "S"])


def _stage(k: int, st: "Stage") -> list[str]:
    claim, done = k * STATE_STRIDE, k * STATE_STRIDE + STATE_STRIDE // 2
    lines = [f"    # stage {k}: {st.description}"]
    if st.items is not None:
        lines.append(f"    total = {st.items}")
        prelude: list[str] = []
    else:
        rows = "N" if st.batched else "1"
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
        f"    while atomic_load(S, {done}) < total:",
        "        cpu_relax()",
    ]
    return lines


def render(graph: "Graph", gen: "_Generator", plan: "StoragePlan", *, cache: bool = True) -> str:
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    args = _args(n_in, n_out)
    imports = []
    for module, names in _HELPER_MODULES.items():
        used = sorted(n for n in names if n in gen.helpers)
        if used:
            imports.append(f"from {module} import {', '.join(used)}")
    kernels = sorted(h for h in gen.helpers if h.startswith("mk_"))
    if kernels:
        imports.append(f"from keydnn.backends.numba_cpu.ukernels import {', '.join(kernels)}")
    shapes = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [
        f'"""keydnn numba-cpu code for graph {graph.name!r} ({shapes}); generated, do not edit."""',
        "",
        "import numba",
        "from numba import prange",
        "",
        "from keydnn.backends.numba_cpu.simd import atomic_add, atomic_load, cpu_relax",
        *imports,
        "",
        f'OPTIONS = dict(cache={cache!r}, nogil=True, error_model="numpy", boundscheck=False)',
        f"SOURCE_VERSION = {SOURCE_VERSION}",
        f"N_STAGES = {len(gen.stages)}",
        "",
        "",
        "@numba.njit(**OPTIONS)",
        f"def body(tid, nthr, N, {args}):",
        f"    AF = N * {plan.per_sample}",
        f"    SC = AF + {plan.fixed} + tid * {gen.scratch}",
    ]
    for k, st in enumerate(gen.stages):
        lines += _stage(k, st)
    lines += [
        "    return 0",
        "",
        "",
        "@numba.njit(parallel=True, **OPTIONS)",
        f"def entry(nthr, N, {args}):",
        "    for i in range(S.size):",
        "        S[i] = 0",
        "    if nthr <= 1:",
        f"        body(0, 1, N, {args})",
        "    else:",
        "        for tid in prange(nthr):",
        f"            body(tid, nthr, N, {args})",
        "    return 0",
        "",
    ]
    return "\n".join(lines)
