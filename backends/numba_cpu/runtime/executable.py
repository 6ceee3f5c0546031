"""The code-generating executable: one compiled entry per graph and per-sample input shapes.

Compiling is eager for the graph's declared shapes (only the batch is
symbolic, and the batch is a runtime argument of the generated code), so a
model's first call does not pay for it; other per-sample shapes compile on
first use. A graph with a symbolic sequence length (``(None, features)``
inputs) is checked at construction by generating code for a probe length, then
compiles once per distinct length on first use; the compiled lengths are an
LRU of ``MAX_VARIANTS`` entries, so a repeated length never compiles again. A call checks and converts the inputs, allocates the outputs and
calls the entry once: there is no per-layer Python. Arena and scheduler state
are per thread, so concurrent calls never share scratch.

The entry is either numba's (``jit``: a dispatcher taking arrays) or a
prebuilt library's (``aot``: a C function taking addresses, called through
ctypes); this module imports numba only for the former.

Beside it: the compiled entry and its lazy compile hooks (``variant``), what
one call runs on — plan, buffers, batch chunks, addresses, helper threads
(``call_plan``) — and the checks of a call's inputs (``inputs``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Callable, Optional, Sequence

import numpy as np

from keydnn.backends.numba_cpu.runtime.cache import cache_enabled, load_program
from keydnn.backends.numba_cpu.codegen.emit_conv_recurrent import EMITTERS_CONV_SEQ
from keydnn.backends.numba_cpu.codegen.emit_3d import EMITTERS_3D
from keydnn.backends.numba_cpu.codegen.emit_misc import EMITTERS_MISC
from keydnn.backends.numba_cpu.codegen.emit_nn import EMITTERS_NN
from keydnn.backends.numba_cpu.codegen.emit_seq import EMITTERS_SEQ, index_checks, index_inputs
from keydnn.backends.numba_cpu.codegen.emit_tensor import EMITTERS_TENSOR
from keydnn.backends.numba_cpu.codegen.source import state_size
from keydnn.backends.numba_cpu.kernels.thunks import yield_address
from keydnn.backends.numba_cpu.codegen.program import Unsupported, generate
from keydnn.backends.numba_cpu.codegen.cpu import native_lanes, thread_count
from keydnn.backends.numba_cpu.runtime.call_plan import (
    CHUNK_BYTES, HELPERS, MIN_CHUNK, CallPlan, aligned_empty, array_address, batch_chunk,
)
from keydnn.backends.numba_cpu.runtime.inputs import batch_key, constant_outputs, store_ids
from keydnn.backends.numba_cpu.runtime.variant import LazyAot, LazyCompile, Variant

from keydnn.ir.graph import Graph

__all__ = ["CodegenExecutable", "EMITTERS", "PARALLEL_MIN_WORK", "MAX_THREADS", "try_codegen", "codegen_or_reason",
           "array_address", "batch_chunk", "CHUNK_BYTES", "MIN_CHUNK"]

logger = logging.getLogger(__name__)

#: op kind -> code generator (the codegen twin of lowering.KERNELS).
EMITTERS = {**EMITTERS_NN, **EMITTERS_MISC, **EMITTERS_3D, **EMITTERS_TENSOR, **EMITTERS_SEQ, **EMITTERS_CONV_SEQ}
#: A call whose estimated work (flops or element moves) is below this runs on the calling thread only.
PARALLEL_MIN_WORK = 1 << 19
#: Threads a call uses at most (numba's own thread count caps it too).
MAX_THREADS = 8
_THREADS = max(1, min(thread_count(), MAX_THREADS))
#: ``KEYDNN_CPU_PROFILE=1`` generates code that counts the cycles each stage takes (see ``stage_profile``).
PROFILE = os.environ.get("KEYDNN_CPU_PROFILE", "") not in ("", "0")
#: Prebuilt libraries (``cg_aot``) on; ``KEYDNN_AOT=0`` turns them off.
AOT = True


_POOL: list = []


def _pool():
    """The native worker pool's run function (``cpu_pool``), looked up once; None where unavailable."""
    if not _POOL:
        from keydnn.backends.numba_cpu.runtime.pool import pool_function

        _POOL.append(pool_function())
    return _POOL[0]


#: Input-shape keys whose call plans (and buffers) one thread keeps.
MAX_CACHED_SHAPES = 8
#: Compiled per-sample input shapes one executable keeps (an LRU): a graph with a symbolic sequence length
#: compiles once per distinct length on first use (then numba's disk cache and the prebuilt libraries make
#: that length cheap in later processes too); a repeated length reuses its compiled entry, and a workload
#: cycling through more than this many lengths recompiles (loads) the evicted ones. Lengths share one weight
#: blob (the packed weights do not depend on the length).
MAX_VARIANTS = 16
#: The length a symbolic axis takes when an executable checks, without compiling, that codegen handles it.
PROBE_LENGTH = 3


class CodegenExecutable:
    """Compiled form of one graph: generated, shape-specialized numba code behind one entry call."""

    mode = "codegen"

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        ids = index_inputs(graph)  # raises Unsupported where an integer input feeds another op
        floats = [v.type.np_dtype for v in graph.inputs if v.name not in ids]
        self.dtype = np.dtype(floats[0] if floats else _node_dtype(graph))
        #: Token-id inputs travel as int32 (float32 graphs) or int64 in the float array's storage
        #: (``cg_emit_seq``); ``_checks``: (input, table rows, layer) whose ids are range-checked per call.
        self._id_dtype = np.dtype(np.int32 if self.dtype.itemsize == 4 else np.int64)
        self._ids = frozenset(i for i, v in enumerate(graph.inputs) if v.name in ids)
        self._checks = index_checks(graph)
        self._dtypes = tuple(self.dtype if i in self._ids else v.type.np_dtype for i, v in enumerate(graph.inputs))
        self._n_inputs = len(graph.inputs)
        self._variants: dict[tuple, Variant] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        #: Threads a call may use (``set_threads``; default: NUMBA_NUM_THREADS or the usable CPUs, at most 8).
        self.threads = _THREADS
        static = [v.type.shape[1:] for v in graph.inputs]
        if all(isinstance(d, int) for s in static for d in s):
            key = (tuple(tuple(s) for s in static), (True,) * len(static))
            self._variant(key)  # raises Unsupported for graphs the generator does not handle
        else:  # a symbolic axis (sequence length): generate (not compile) one probe shape to refuse early
            probe = tuple(tuple(d if isinstance(d, int) else PROBE_LENGTH for d in s) for s in static)
            generate(graph, probe, (True,) * len(static), lanes=native_lanes(str(self.dtype)), emitters=EMITTERS,
                     cache=False)

    # -- compiling ------------------------------------------------------------
    def _variant(self, key: tuple) -> Variant:
        var = self._variants.get(key)
        if var is not None:
            with self._lock:  # a hit moves the shape to the young end of the LRU
                if key in self._variants:
                    self._variants[key] = self._variants.pop(key)
            return var
        with self._lock:
            var = self._variants.get(key)
            if var is None:
                var = self._build(key)
                if len(self._variants) >= MAX_VARIANTS:  # least recently compiled-or-planned shape out
                    self._variants.pop(next(iter(self._variants)))
                self._variants[key] = var
            else:
                self._variants[key] = self._variants.pop(key)  # most recently used last
        return var

    def _build(self, key: tuple) -> Variant:
        try:
            return self._build_as(key, None)
        except Exception as exc:  # noqa: BLE001 - only numba's compile errors are retried, the rest re-raised
            if not any(c.__name__ == "NumbaError" for c in type(exc).__mro__):
                raise
            # a stage that compiles inline but not as a shared stage function (an emitter whose code needs a
            # number to be a compile-time constant): the whole graph inline, as before shared stages
            logger.warning("graph %r: a shared stage function did not compile (%s: %s); compiling the graph's "
                           "stages inline", self.graph.name, type(exc).__name__, str(exc).splitlines()[0][:300])
            return self._build_as(key, False)

    def _build_as(self, key: tuple, shared: Optional[bool]) -> Variant:
        samples, batched = key
        dtype = self.dtype
        program = generate(self.graph, samples, batched, lanes=native_lanes(str(dtype)), emitters=EMITTERS,
                           profile=PROFILE, shared=shared)
        for other in list(self._variants.values()):  # sequence lengths pack the same weights: share one blob
            w = other.program.weights
            if w.shape == program.weights.shape and np.array_equal(w, program.weights):
                program.weights = w
                break
        n_in, n_out = len(self.graph.inputs), len(self.graph.outputs)
        helpers = program.thunks[1:]
        aot = None
        if cache_enabled() and AOT:
            from keydnn.backends.numba_cpu.runtime.aot import aot_enabled

            if aot_enabled():
                aot = LazyAot(helpers, dtype)
        loaded = load_program(program.source, self.graph.name, LazyCompile(n_in, n_out, dtype), aot)
        if loaded.kind == "aot":
            thunks = np.array([yield_address(), *loaded.thunks], dtype=np.int64)
            address = ctypes.cast(loaded.entry, ctypes.c_void_p).value or 0
            return Variant(program, key, loaded.entry, True, thunks, address)
        from keydnn.backends.numba_cpu.runtime.jit import thunk_addresses

        thunks = np.array([yield_address(), *thunk_addresses(helpers, dtype)], dtype=np.int64)
        return Variant(program, key, loaded.module.entry, False, thunks)

    @property
    def source(self) -> str:
        """The generated source of the graph's declared shapes (for inspection and debugging)."""
        return next(iter(self._variants.values())).program.source

    def set_threads(self, threads: int) -> None:
        """Let calls use ``threads`` threads (the native pool's limit, 64, caps it); plans made before
        are dropped, so the next call of every thread plans with the new count."""
        self.threads = max(1, int(threads))
        self._local = threading.local()

    # -- running --------------------------------------------------------------
    def _plan(self, shapes: tuple, arrays: list[np.ndarray]) -> "CallPlan":
        """What calls with these input shapes need on this thread: variant, outputs, threads, buffers."""
        n, key = self._key(arrays)
        try:
            var = self._variant(key)
        except Unsupported as exc:
            if all(key[1]):
                raise
            return self._broadcast_plan(shapes, n, key, exc)
        prog = var.program
        chunk = batch_chunk(prog, key)
        if chunk < n:
            return self._keep(shapes, CallPlan(var, n, [(n,) + sample for _, sample, _ in prog.outputs], 0, (),
                                                np.empty(0, self.dtype), np.empty(0, np.int64), chunk=chunk))
        nthr = 1 if n * prog.work_per_sample < PARALLEL_MIN_WORK else self.threads
        arena = aligned_empty(n * prog.arena_per_sample + prog.arena_fixed + nthr * prog.scratch_per_thread + 64,
                               self.dtype)
        state = np.zeros(state_size(prog.n_stages) + prog.state_extra, dtype=np.int64)
        tail = var.tail(arena, state)
        plan = CallPlan(var, n, [((n if b else 1),) + sample for _, sample, b in prog.outputs], nthr, tail, arena,
                         state)
        if var.aot:
            io = len(self.graph.inputs) + len(self.graph.outputs)
            plan.slots = np.zeros(io + len(tail), dtype=np.int64)
            plan.slots[io:] = [a.ctypes.data for a in tail]
            plan.slots_address = plan.slots.ctypes.data
            plan.bound = self._bind(plan)
        return self._keep(shapes, plan)

    def _broadcast_plan(self, shapes: tuple, n: int, key: tuple, why: Exception) -> "CallPlan":
        """The plan of a call whose batch-1 inputs sit beside batch-``n`` ones where the generated code needs
        every operand of some op batched (time folded into the batch, a recurrence): the batch-``n`` code on
        those inputs repeated ``n`` times, and one row of each output that depends on batch-1 inputs only
        (every row of it is the same), so the results are what the per-op kernels give."""
        logger.info("graph %r: %s; running its batch-%d code on the batch-1 inputs repeated", self.graph.name,
                    why, n)
        samples, batched = key
        full = [np.empty((n,) + tuple(s), dtype=dt) for s, dt in zip(samples, self._dtypes)]
        plan = self._plan(tuple(a.shape for a in full), full)
        cut = constant_outputs(self.graph, batched)
        wide = CallPlan(plan.var, n, [], 0, (), np.empty(0, self.dtype), np.empty(0, np.int64),
                         broadcast=(tuple(not b for b in batched), cut))
        return self._keep(shapes, wide)

    def _keep(self, shapes: tuple, plan: "CallPlan") -> "CallPlan":
        plans = self._local.plans
        if len(plans) >= MAX_CACHED_SHAPES:
            plans.pop(next(iter(plans)))
        plans[shapes] = plan
        return plan

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        fast = getattr(self._local, "fast", None)
        if fast is not None and len(inputs) == 1:  # the shape this thread called with last, a single input
            x = inputs[0]
            if type(x) is np.ndarray and x.shape == fast[0] and x.dtype == fast[1] and x.flags.c_contiguous:
                plan = fast[2]
                outs = [np.empty(shape, dtype=self.dtype) for shape in plan.out_shapes]
                plan.bound(inputs, outs)
                return outs
        if len(inputs) != self._n_inputs:
            raise ValueError(f"graph {self.graph.name!r} takes {self._n_inputs} inputs, got {len(inputs)}")
        if self._ids or self._checks:
            inputs = self._index_inputs(inputs)
        arrays = []
        for a, dt in zip(inputs, self._dtypes):
            # the entry is compiled for writable C-contiguous arrays of the graph's dtype; anything else is
            # copied once here rather than compiling another specialization
            if type(a) is not np.ndarray or a.dtype != dt or not a.flags.c_contiguous or not a.flags.writeable:
                a = np.array(a, dtype=dt, order="C")
            arrays.append(a)
        local = self._local
        try:
            plans = local.plans
        except AttributeError:
            plans = local.plans = {}
            local.gen = 0
        shapes = tuple(a.shape for a in arrays)
        plan = plans.get(shapes) or self._plan(shapes, arrays)
        if plan.broadcast is not None:
            repeat, cut = plan.broadcast
            full = [np.repeat(a, plan.n, axis=0) if r else a for a, r in zip(arrays, repeat)]
            shapes = tuple(a.shape for a in full)
            outs = self._run_all(plans.get(shapes) or self._plan(shapes, full), full, plans)
            return [o[:1].copy() if c else o for o, c in zip(outs, cut)]
        outs = self._run_all(plan, arrays, plans)
        if plan.chunk >= plan.n and len(arrays) == 1 and plan.bound is not None and not (self._ids or self._checks):
            local.fast = (arrays[0].shape, arrays[0].dtype, plan)
        return outs

    def _run_all(self, plan: "CallPlan", arrays: list[np.ndarray], plans: dict) -> list[np.ndarray]:
        """The outputs of one call on ``arrays`` (the plan's shapes): one entry call, or one per chunk."""
        outs = [np.empty(shape, dtype=self.dtype) for shape in plan.out_shapes]
        chunk = plan.chunk
        if chunk >= plan.n:
            self._run(plan, arrays, outs)
            return outs
        for c0 in range(0, plan.n, chunk):  # every input and output is batched (else chunk covers the batch)
            part = [a[c0:c0 + chunk] for a in arrays]
            shapes = tuple(a.shape for a in part)
            self._run(plans.get(shapes) or self._plan(shapes, part), part, [o[c0:c0 + chunk] for o in outs])
        return outs

    def _index_inputs(self, inputs: Sequence) -> list:
        """Token ids range-checked, integer inputs stored in the float array (``inputs.store_ids``)."""
        return store_ids(self.graph, inputs, self._checks, self._ids, self._id_dtype, self.dtype)

    def _bind(self, plan: "CallPlan") -> Callable[[Sequence[np.ndarray], list[np.ndarray]], None]:
        """``run(arrays, outs)``: one call of a prebuilt entry on arrays of the plan's shapes, with everything
        that does not change between calls bound once (a batch-1 call of a small model takes 8 us, and the
        per-call lookups had cost one of them)."""
        var, slots, address, n, nthr = plan.var, plan.slots, plan.slots_address, plan.n, plan.nthr
        entry_address, entry, local = var.address, var.fn, self._local
        pool = _pool() if nthr > 1 else None
        k = len(self.graph.inputs)

        def run(arrays: Sequence[np.ndarray], outs: list[np.ndarray]) -> None:
            for i, a in enumerate(arrays):
                slots[i] = array_address(a)
            for j, o in enumerate(outs):
                slots[k + j] = array_address(o)
            local.gen = gen = local.gen + 1  # never reused: a late helper thread recognizes a finished call
            if pool is not None:
                pool(entry_address, nthr, gen, n, address)
            elif nthr > 1:  # no native pool: Python helper threads
                HELPERS.submit(nthr - 1, entry, lambda tid: (tid, nthr, gen, n, address), plan)
                entry(0, nthr, gen, n, address)
            else:
                entry(0, 1, gen, n, address)

        return run

    def _run(self, plan: "CallPlan", arrays: list[np.ndarray], outs: list[np.ndarray]) -> None:
        """One call of the entry on ``arrays`` (the plan's shapes), writing into ``outs``."""
        if plan.bound is not None:
            plan.bound(arrays, outs)
            return
        local = self._local
        local.gen = gen = local.gen + 1  # never reused: a late helper thread recognizes a finished call
        n, nthr, entry = plan.n, plan.nthr, plan.var.fn
        args = (*[a.reshape(-1) for a in arrays], *[o.reshape(-1) for o in outs], *plan.tail)
        if nthr > 1:
            HELPERS.submit(nthr - 1, entry, lambda tid: (tid, nthr, gen, n, *args))
        entry(0, nthr, gen, n, *args)

    def stage_profile(self) -> list[tuple[str, list[int], list[int]]]:
        """Per stage of the calling thread's buffers: (description, busy cycles per thread, waiting cycles
        per thread), accumulated over calls since compiling with ``KEYDNN_CPU_PROFILE=1``."""
        from keydnn.backends.numba_cpu.codegen.source import stage_slots

        rows = []
        for plan in getattr(self._local, "plans", {}).values():
            var, state = plan.var, plan.state
            for k, desc in enumerate(var.program.stages):
                claim, done = stage_slots(k)
                rows.append((desc, [int(v) for v in state[claim + 1: claim + 4]],
                             [int(v) for v in state[done + 1: done + 4]]))
        return rows

    def _key(self, arrays: list[np.ndarray]) -> tuple[int, tuple]:
        """Batch size and variant key; checks every input against its declared type (``inputs.batch_key``)."""
        return batch_key(self.graph, arrays)

    def __repr__(self) -> str:
        return f"CodegenExecutable({self.graph.name!r}, {len(self._variants)} compiled shape(s))"


def _node_dtype(graph: Graph) -> str:
    """The dtype of the first typed node result (a graph whose inputs are all token ids)."""
    for node in graph.nodes:
        if node.outputs[0].type is not None:
            return node.outputs[0].type.dtype
    return "float32"


def codegen_or_reason(graph: Graph) -> tuple[Optional[CodegenExecutable], str]:
    """(the codegen executable, "") or (None, why the generator does not handle ``graph``: the op it names)."""
    try:
        return CodegenExecutable(graph), ""
    except Unsupported as exc:
        logger.info("graph %r runs on the per-op kernels: %s", graph.name, exc)
        return None, str(exc)


def try_codegen(graph: Graph) -> Optional[CodegenExecutable]:
    """The codegen executable, or None for a graph the generator does not handle."""
    return codegen_or_reason(graph)[0]
