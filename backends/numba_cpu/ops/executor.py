"""The per-op executable (``mode="ops"``): every node its own step, run from a plan in a Python loop.

Each node runs as a one-node generated program (``steps``/``one_node``): the same emitters and helpers as
the whole-graph code, compiled once per node signature, so the per-op mode (debugging; the fallback for
graphs the generator cannot specialize as a whole) has no kernels of its own. Compile time builds every
step; a call only looks up the memory layout for its input shapes (arena buffers reused along the graph,
in-place steps, views) and runs one step per node. ``trace`` returns every node's result, for
inspection. State shared between threads is immutable or guarded by a lock; buffers are per thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from typing import Optional

import numba
import numpy as np

from keydnn.backends.step_list import node_where, opaque_problem
from keydnn.backends.step_list import slot_names as slot_list
from keydnn.backends.numba_cpu.ops.lowering import Unsupported
from keydnn.backends.numba_cpu.ops.steps import lower_node
from keydnn.backends.numba_cpu.ops.plan import MemoryLayout, Plan, Step, plan_memory, resolve_shapes
from keydnn.errors import BackendError
from keydnn.ir.graph import Graph

__all__ = ["NumbaCpuExecutable", "compile_graph", "MODES", "default_mode"]

logger = logging.getLogger(__name__)

#: Distinct input-shape keys whose buffers one thread keeps.
MAX_CACHED_SHAPES = 8

# Numba's "workqueue" threading layer aborts the process when two threads launch
# parallel kernels at once; with it (or before the layer is known) calls are serialized.
_WORKQUEUE_LOCK = threading.Lock()


def _parallel_guard() -> contextlib.AbstractContextManager:
    try:
        layer = numba.threading_layer()
    except ValueError:  # not initialized until the first parallel kernel runs
        return _WORKQUEUE_LOCK
    return _WORKQUEUE_LOCK if layer == "workqueue" else contextlib.nullcontext()


def _build_plan(graph: Graph) -> Plan:
    """Build every node's step (``steps.lower_node``); report every node the backend cannot run at once."""
    slot_names = slot_list(graph)
    slot = {name: i for i, name in enumerate(slot_names)}
    types = graph.value_types()
    problems: list[str] = []
    for value in graph.inputs:
        if value.type is None:
            problems.append(f"graph input %{value.name} has no type")
    steps: list[Step] = []
    opaque = graph.find_opaque()
    for node in graph.nodes:
        where = node_where(node)
        if node.op.kind == "opaque":
            problems.append(opaque_problem(node))
            continue
        in_types = tuple(types.get(i) for i in node.inputs)
        if node.outputs[0].type is None or any(t is None for t in in_types):
            if not opaque:  # downstream of a placeholder nothing is typed; the placeholder says why
                problems.append(f"{where} has untyped operands or result; run the infer-shapes pass first")
            continue
        try:
            lowered = lower_node(node, in_types, types, graph.weights)
        except Unsupported as exc:
            problems.append(f"{where}: {exc}")
            continue
        steps.append(Step(node.name, node.op.kind, lowered, tuple(slot[i] for i in node.inputs),
                          slot[node.outputs[0].name], node.outputs[0].type.np_dtype))
    if problems:
        raise BackendError(f"numba-cpu cannot compile graph {graph.name!r}:\n"
                           + "\n".join(f"  - {p}" for p in problems))
    template: list[Optional[np.ndarray]] = [None] * len(slot_names)
    for c in graph.constants:
        template[slot[c.name]] = graph.weights[c.name]
    return Plan(
        graph=graph, steps=tuple(steps), slot_names=tuple(slot_names),
        input_slots=tuple(slot[v.name] for v in graph.inputs),
        output_slots=tuple(slot[o] for o in graph.outputs), template=tuple(template),
    )


class NumbaCpuExecutable:
    """Compiled form of one graph for the CPU: one kernel per op, run from a plan."""

    mode = "ops"
    #: Threads a call may use (``set_threads``; None: numba's current count).
    threads: Optional[int] = None

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.plan = _build_plan(graph)
        self._input_dtypes = tuple(v.type.np_dtype for v in graph.inputs)
        self._layouts: dict[tuple, MemoryLayout] = {}
        self._layouts_lock = threading.Lock()
        self._local = threading.local()
        logger.debug("numba-cpu plan for %s:\n%s", graph.name, self.plan)

    def set_threads(self, threads: int) -> None:
        """Let a call's steps use ``threads`` threads (numba's pool size caps the per-op-only kernels)."""
        self.threads = max(1, int(threads))
        for step in self.plan.steps:
            program = getattr(step.op.run, "program", None)
            if program is not None:
                program.set_threads(self.threads)

    def _layout(self, key: tuple) -> MemoryLayout:
        layout = self._layouts.get(key)
        if layout is None:
            with self._layouts_lock:
                layout = self._layouts.get(key)
                if layout is None:
                    layout = plan_memory(self.plan, resolve_shapes(self.plan.graph, key))
                    self._layouts[key] = layout
        return layout

    def _arena(self, key: tuple, layout: MemoryLayout) -> list[Optional[np.ndarray]]:
        cache: OrderedDict = getattr(self._local, "arenas", None)
        if cache is None:
            cache = self._local.arenas = OrderedDict()
        bufs = cache.get(key)
        if bufs is None:
            bufs = cache[key] = layout.allocate_arena()
            while len(cache) > MAX_CACHED_SHAPES:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return bufs

    def _execute(self, inputs: tuple, private: bool = False) -> tuple[list, MemoryLayout]:
        """Run every step: into the planned buffers (arena reuse, in-place steps), or with ``private`` each
        allocating step into a new array of its own (``trace``)."""
        plan = self.plan
        if len(inputs) != len(plan.input_slots):
            raise ValueError(f"graph {self.graph.name!r} takes {len(plan.input_slots)} inputs, got {len(inputs)}")
        # Steps are compiled for writable C-contiguous arrays of the graph's dtype; anything
        # else is copied once here rather than triggering another specialization.
        arrays = [
            a if a.dtype == dt and a.flags.c_contiguous and a.flags.writeable else np.array(a, dtype=dt, order="C")
            for a, dt in zip(map(np.asarray, inputs), self._input_dtypes)
        ]
        key = tuple(a.shape for a in arrays)
        layout = self._layout(key)
        bufs = [None] * len(layout.placements) if private else self._arena(key, layout)
        fresh = [np.empty(n, dtype=d) for n, d in layout.fresh]
        env = list(plan.template)
        for s, a in zip(plan.input_slots, arrays):
            env[s] = a
        original = current = numba.get_num_threads()
        threads = original if self.threads is None else min(self.threads, numba.config.NUMBA_NUM_THREADS)
        with _parallel_guard():
            try:
                for step, place, buf in zip(plan.steps, layout.placements, bufs):
                    if not step.op.allocates:  # a view: the operand reshaped to the step's concrete shape
                        env[step.output] = env[step.operands[0]].reshape(place.shape)
                        continue
                    want = 1 if place.serial else threads
                    if want != current:  # thread-local in numba (per-op-only kernels): other callers unaffected
                        numba.set_num_threads(want)
                        current = want
                    if private:
                        buf = np.empty(place.shape, dtype=place.dtype)
                    elif place.kind == "fresh":
                        buf = fresh[place.index].reshape(place.shape)
                    env[step.output] = step.op.run([env[s] for s in step.operands], buf)
            finally:
                if current != original:
                    numba.set_num_threads(original)
        return env, layout

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        env, layout = self._execute(inputs)
        results: list[np.ndarray] = []
        handed_out: set[int] = set()
        for s, f in zip(self.plan.output_slots, layout.output_fresh):
            if f >= 0 and f not in handed_out:
                handed_out.add(f)
                results.append(env[s])
            else:
                results.append(np.array(env[s], copy=True))
        return results

    def trace(self, *inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Every value of one call by name (graph inputs, then each node's result in order), for debugging:
        each step writes an array of its own here (no arena reuse, nothing in place), so every intermediate
        result survives the call; the values are what ``__call__`` computes (views stay views)."""
        env, _ = self._execute(inputs, private=True)
        names = [v.name for v in self.graph.inputs] + [n.outputs[0].name for n in self.graph.nodes]
        slot = {name: i for i, name in enumerate(self.plan.slot_names)}
        return {name: env[slot[name]] for name in names}

    def __repr__(self) -> str:
        return f"NumbaCpuExecutable({self.graph.name!r}, {len(self.plan.steps)} steps)"


from keydnn.backends.numba_cpu.modes import MODES, compile_graph, default_mode  # noqa: E402,F401  (re-exported)
