"""Whole-graph code generation: a typed graph and its per-sample shapes -> one Python module of numba code.

The generated module has one ``entry`` function per graph. Every shape,
stride, padding and buffer offset is a literal in its source; only the batch
size ``N`` is a runtime value (so one compiled function serves every batch),
and weights travel as three flat arrays: ``W`` (the graph's dtype: conv and
dense weights, pre-packed for the GEMM micro-kernels), ``D`` (float64
parameters of affine ops) and ``T`` (int64 index tables). Activations live in
one flat arena ``A`` laid out here (buffers are reused once their value is
dead; elementwise ops run in place), graph outputs are written straight into
the caller's arrays.

The body is a sequence of *stages*, one per node that moves data. A stage is
a set of independent work items (samples, split into blocks when the batch is
too small to keep every thread busy); threads claim items with an atomic
counter and wait for the stage to drain before the next one, so the code is
correct whether one thread or several run it, in any interleaving.
``entry`` runs ``body`` on ``nthr`` threads (one ``prange``) or inline.

Each stage is compiled as a shared stage function (``cg_stagefn``): its
numbers become parameters in ``T`` / ``D``, so stages that differ only in
their numbers (the same block at other offsets, in this graph or another)
share one compiled function, and ``entry`` calls them in order through their
addresses. The literals above are then values in those tables; the text of a
stage, as emitters write it, is the same either way.

Emitters (``cg_emit.EMITTERS``, keyed by op kind) describe each node's stage;
this module owns values, storage, blobs and the text around them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from keydnn.errors import BackendError
from keydnn.ir.graph import Graph, Node
from keydnn.ir.ops import kinds_with
from keydnn.ir.types import TensorType

__all__ = ["Val", "Arr", "Stage", "EmitContext", "Program", "generate", "Unsupported", "LayoutUnsupported", "GRAIN", "VIEW_KINDS",
           "fold_merge_activations", "ALIGN", "aligned"]

logger = logging.getLogger(__name__)

#: Floating-point work (flops or element moves) below which a block is not split further.
GRAIN = 1 << 15
#: Arena buffers and thread scratch start at multiples of this many elements, and the arena itself at a 64-byte
#: boundary: a vector load straddling two cache lines costs two, and numpy's allocator aligns to 16 bytes only.
ALIGN = 16
#: Ops that never move data: their result is a reshaped view of their operand's storage.
VIEW_KINDS = kinds_with("is_view")
#: Elementwise merges, and the activations the generated code folds into a merge's last pass when the merge's
#: result feeds nothing else (a residual block's add + relu: one pass over the tensor instead of two).
MERGE_KINDS = kinds_with("is_elementwise_merge")
FUSIBLE_INTO_MERGE = kinds_with("is_activation")
#: Ops that may write over their first operand when it is dead afterwards.
INPLACE_KINDS = kinds_with("writes_in_place")


def aligned(elements: int) -> int:
    """``elements`` rounded up to a multiple of ``ALIGN``."""
    return -(-elements // ALIGN) * ALIGN


class Unsupported(BackendError):
    """A graph (or node) the code generator does not handle; the ops path still may."""


class LayoutUnsupported(Unsupported):
    """A node in a layout the kernels do not take (channels-last): a pass's job (canonicalize-layout), so the
    per-op mode refuses it too, by name, rather than running it on the reference kernel."""


@dataclass
class Arr:
    """An array argument of a helper call, by its name in the generated code (W, D, T, A, x0, y0...)."""

    def __init__(self, name: str) -> None:
        self.name = name


@dataclass
class Storage:
    """A home for values: an input or output array, or a region of the arena."""

    array: str  # variable name in the generated code
    per_sample: int  # elements per sample (batched) or in total (fixed)
    batched: bool
    offset: int = 0  # arena only: in per-sample units (batched) or elements (fixed)
    fixed_arena: bool = False


@dataclass
class Val:
    """One IR value as the generated code sees it."""

    name: str
    batched: bool
    sample: tuple[int, ...]  # shape without the leading (batch) axis
    lead: int  # leading dim when not batched
    storage: Optional[Storage] = None

    @property
    def size(self) -> int:
        return math.prod(self.sample)

    @property
    def shape(self) -> tuple:
        return (("N" if self.batched else self.lead),) + self.sample

    @property
    def array(self) -> str:
        return self.storage.array

    def base(self) -> str:
        """Offset expression of the value's first element. A batched value's is ``N * offset`` even where the
        offset is 0 (an input, the arena's first buffer): the same expression for every buffer, so that stages
        that differ only in where their buffers lie share one stage function (``cg_stagefn``)."""
        st = self.storage
        if st.array != "A":
            return "N * 0" if self.batched else "0"
        if st.fixed_arena:
            return f"AF + {st.offset}"
        return f"N * {st.offset}"

    def at(self, n: str = "n") -> str:
        """Offset expression of sample ``n`` (sample 0 for an unbatched value)."""
        base = self.base()
        if not self.batched:
            return base
        return f"{base} + {n} * {self.size}" if base != "0" else f"{n} * {self.size}"


@dataclass
class Stage:
    """A parallel step: ``body`` lines run once per item.

    Per-sample form (``items`` is None): items are the samples of ``rows_of``
    (``N`` if batched, else 1) times ``blocks`` (at most ``max_blocks``, more
    when the batch is small); the body sees ``n`` and a block ``[lo, hi)`` of
    ``range(split)``. Custom form: ``items`` is an expression and the body sees
    the item index ``it``.
    """

    description: str
    body: list[str]
    batched: bool = True
    split: int = 1
    max_blocks: int = 1
    items: Optional[str] = None
    work: float = 0.0  # per-sample (or total when unbatched) work estimate
    setup: list[str] = field(default_factory=list)  # lines before the claim loop (per thread)


@dataclass
class Program:
    """What ``generate`` returns: the module source and the arrays its entry expects."""

    source: str
    weights: np.ndarray  # W
    params: np.ndarray  # D, float64
    tables: np.ndarray  # T, int64
    arena_per_sample: int
    arena_fixed: int
    scratch_per_thread: int
    n_stages: int
    work_per_sample: float
    outputs: list[tuple[str, tuple[int, ...], bool]]  # per graph output: (how, sample shape, batched)
    thunks: list[str] = field(default_factory=list)  # helper of F[i]
    stages: list[str] = field(default_factory=list)  # description of each stage
    dtype: np.dtype = np.dtype("float32")
    state_extra: int = 0  # int64 slots the state array has beyond ``cg_source.state_size(n_stages)``
    #: per stage: the name of the shared stage function that runs it (``cg_stagefn``), or None where it is inline
    stage_functions: list = field(default_factory=list)


class EmitContext:
    """What an emitter sees of one node, and how it adds weights, tables, scratch and stages."""

    def __init__(self, gen: "_Generator", node: Node, ins: list[Val], out: Val) -> None:
        self._gen = gen
        self.node = node
        self.op = node.op if node is not None else None
        self.ins = ins
        self.out = out
        self.dtype = gen.dtype
        self.lanes = gen.lanes
        #: An activation op folded into this node's stage (merges only: see ``fold_merge_activations``).
        self.fused = None

    def weight(self, array: np.ndarray) -> int:
        return self._gen.add_blob(self._gen.w_parts, "w_len", np.asarray(array, dtype=self.dtype).reshape(-1))

    def param64(self, array: np.ndarray) -> int:
        return self._gen.add_blob(self._gen.d_parts, "d_len", np.asarray(array, dtype=np.float64).reshape(-1))

    def table(self, values) -> int:
        return self._gen.add_blob(self._gen.t_parts, "t_len", np.asarray(values, dtype=np.int64).reshape(-1))

    def constant(self, position: int) -> Optional[np.ndarray]:
        if position >= len(self.node.inputs):
            return None
        name = self.node.inputs[position]
        if name not in self._gen.graph.weights:
            raise Unsupported(f"operand {position} (%{name}) must be a constant weight")
        return np.asarray(self._gen.graph.weights[name])

    def scratch(self, elements: int) -> str:
        """Offset expression of this thread's private scratch of ``elements`` (valid during one item)."""
        self._gen.scratch = max(self._gen.scratch, aligned(int(elements) + 64))
        return "SC"

    def stage(self, stage: Stage) -> None:
        self._gen.stages.append(stage)

    def call(self, helper: str, *args: object) -> str:
        """The line calling ``helper`` (a ``cg_thunks.HELPERS`` name) through its thunk's address.

        Array arguments are ``Arr`` (or a ``Val``: its array); everything else is printed as is.
        """
        from keydnn.backends.numba_cpu.kernels.thunks import HELPERS

        kinds = HELPERS[helper][1]
        if len(kinds) != len(args):
            raise AssertionError(f"{helper} takes {len(kinds)} arguments, got {len(args)}")
        index = self._gen.thunk_index(helper)
        text = []
        for kind, arg in zip(kinds, args):
            if kind in "adt":
                name = arg.array if isinstance(arg, Val) else arg.name if isinstance(arg, Arr) else str(arg)
                self._gen.arrays.add(name)
                text.append(f"p_{name}")
            elif kind == "f":
                text.append(repr(float(arg)) if isinstance(arg, (int, float)) else str(arg))
            else:
                text.append(str(arg))
        return f"fcall(F[{index}], {', '.join(text)})"


Emitter = Callable[[EmitContext], None]


class _Generator:
    def __init__(self, graph: Graph, dtype: np.dtype, lanes: int) -> None:
        self.graph = graph
        self.dtype = dtype
        self.lanes = lanes
        self.w_parts: list[np.ndarray] = []
        self.d_parts: list[np.ndarray] = []
        self.t_parts: list[np.ndarray] = []
        self.w_len = self.d_len = self.t_len = 0
        self.scratch = 0
        self.stages: list[Stage] = []
        self.thunks: list[str] = ["<yield>"]  # F[0]: the OS's yield call (cg_sync)
        self.arrays: set[str] = set()
        self.state_extra = 0  # state slots after the stage counters (cg_source: the stage functions' addresses)
        self.publish: list[str] = []  # lines thread 0 runs before it opens a call (cg_source)
        self.stage_functions: list[Optional[str]] = []  # per stage: its shared function (cg_stagefn), None inline

    def thunk_index(self, helper: str) -> int:
        if helper not in self.thunks:
            self.thunks.append(helper)
        return self.thunks.index(helper)

    def add_blob(self, parts: list, attr: str, arr: np.ndarray) -> int:
        offset = getattr(self, attr)
        pad = (-offset) % 16  # 64-byte aligned starts for float32
        if pad:
            parts.append(np.zeros(pad, dtype=arr.dtype))
        parts.append(arr)
        setattr(self, attr, offset + pad + arr.size)
        return offset + pad


def _types_of(graph: Graph, sample_shapes: tuple[tuple[int, ...], ...], batched: tuple[bool, ...]) -> dict:
    """Concrete (batched, sample, lead) of every value, from the ops' own shape rules (batch stands for N)."""
    env: dict[str, tuple[bool, TensorType]] = {}
    probe = 7  # a batch size no static dim is compared against (only the rule's own arithmetic)
    for value, sample, b in zip(graph.inputs, sample_shapes, batched):
        env[value.name] = (b, value.type.with_shape(((probe if b else 1),) + tuple(sample)))
    for c in graph.constants:
        env[c.name] = (False, c.type)
    out: dict[str, tuple[bool, tuple[int, ...], int]] = {}
    for v in graph.inputs:
        b, t = env[v.name]
        out[v.name] = (b, tuple(t.shape[1:]), 1)
    for node in graph.nodes:
        ins = [env[i] for i in node.inputs]
        b = any(x[0] for x in ins if x is not None)
        t = node.op.infer([x[1] for x in ins])
        if not all(isinstance(d, int) for d in t.shape):
            raise Unsupported(f"node {node.name}: shape {t} is not static")
        if t.rank == 0 or (b and t.shape[0] != probe) or (not b and t.shape[0] != 1):
            raise Unsupported(f"node {node.name}: the batch axis does not stay first")
        env[node.outputs[0].name] = (b, t)
        out[node.outputs[0].name] = (b, tuple(t.shape[1:]), 1)
    return out


def fold_merge_activations(graph: Graph) -> dict[str, Node]:
    """Activation nodes to fold into the merge that feeds them -> that merge: the merge's result has no
    other use and is not a graph output, so the activation's result can take its storage (a view)."""
    uses: dict[str, int] = {}
    for node in graph.nodes:
        for name in node.inputs:
            uses[name] = uses.get(name, 0) + 1
    producers = {node.outputs[0].name: node for node in graph.nodes}
    folded = {}
    for node in graph.nodes:
        if node.op.kind not in FUSIBLE_INTO_MERGE or len(node.inputs) != 1:
            continue
        src = producers.get(node.inputs[0])
        if (src is not None and src.op.kind in MERGE_KINDS and uses.get(node.inputs[0]) == 1
                and node.inputs[0] not in graph.outputs and src.name not in folded.values()):
            folded[node.name] = src
    return folded


def generate(graph: Graph, sample_shapes: tuple[tuple[int, ...], ...], batched: tuple[bool, ...], *,
             lanes: int, emitters: dict[str, Emitter], cache: bool = True, profile: bool = False,
             shared: Optional[bool] = None) -> Program:
    """Generate the module for ``graph`` with inputs of the given per-sample shapes. ``shared``: stages as
    shared stage functions (``cg_stagefn``) or inline in the entry (default: ``KEYDNN_SHARED_STAGES``)."""
    from keydnn.backends.numba_cpu.codegen.emit_seq import index_inputs

    ids = index_inputs(graph)  # token ids: integers held in the graph dtype's storage (cg_emit_seq)
    dtypes = {v.type.dtype for v in graph.inputs if v.name not in ids} | {
        n.outputs[0].type.dtype for n in graph.nodes if n.outputs[0].type is not None}
    if len(dtypes) != 1:
        raise Unsupported(f"values of several dtypes {sorted(dtypes)}")
    dtype = np.dtype(dtypes.pop())
    gen = _Generator(graph, dtype, lanes)
    info = _types_of(graph, sample_shapes, batched)
    vals = {name: Val(name, b, s, lead) for name, (b, s, lead) in info.items()}
    from keydnn.backends.numba_cpu.codegen.storage import assign_storage

    folded = fold_merge_activations(graph)
    plan = assign_storage(graph, vals, views=frozenset(folded))
    by_name = {node.name: node for node in graph.nodes}
    fused = {merge.name: by_name[act].op for act, merge in folded.items()}
    for node in graph.nodes:
        if node.op.kind in VIEW_KINDS or node.name in folded:
            continue
        emit = emitters.get(node.op.kind)
        if emit is None:
            raise Unsupported(f"node {node.name} ({node.op.kind}): no code generator for this op")
        ctx = EmitContext(gen, node, [vals[i] for i in node.inputs if i in vals], vals[node.outputs[0].name])
        ctx.fused = fused.get(node.name)
        start = len(gen.stages)
        emit(ctx)
        for st in gen.stages[start:]:
            st.description = f"{node.name}: {st.description}"
    for out_index, src, size in plan.copies:
        v = vals[src]
        ctx = EmitContext(gen, graph.nodes[0] if graph.nodes else None, [], v)
        gen.stages.append(Stage(f"output {out_index} <- %{src}", [
            ctx.call("copy_flat", v, v.at(), Arr(f"y{out_index}"), f"n * {size}", size)], batched=v.batched,
            work=size))
    from keydnn.backends.numba_cpu.codegen.source import render

    source = render(graph, gen, plan, cache=cache, profile=profile, shared=shared)

    def blob(parts, dtype_):
        return np.concatenate(parts + [np.zeros(64, dtype=dtype_)]) if parts else np.zeros(64, dtype=dtype_)

    work = sum(st.work for st in gen.stages)
    descriptions = [st.description for st in gen.stages]
    return Program(
        source=source, weights=blob(gen.w_parts, dtype), params=blob(gen.d_parts, np.float64),
        tables=blob(gen.t_parts, np.int64), arena_per_sample=plan.per_sample, arena_fixed=plan.fixed,
        scratch_per_thread=gen.scratch, n_stages=len(gen.stages), work_per_sample=work,
        outputs=plan.outputs, thunks=list(gen.thunks), dtype=dtype, stages=descriptions,
        state_extra=gen.state_extra, stage_functions=list(gen.stage_functions),
    )
