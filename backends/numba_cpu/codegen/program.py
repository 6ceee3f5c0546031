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

Time folded into the batch (``fold_time`` / ``unfold_time``, TimeDistributed
and ConvLSTM's input convolution) is a view too: a value between them has
``N * T`` rows (``Val.fold``), and its node's stages run with ``N`` standing
for those rows, so every emitter handles any batch and any length unchanged.

Emitters (``cg_emit.EMITTERS``, keyed by op kind) describe each node's stage;
this module owns values, storage, blobs and the text around them. The op kinds
it treats specially and the merge-activation folding (``kinds``) and every
value's concrete shape (``value_types``) live beside it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from keydnn.backends.numba_cpu.codegen.kinds import (
    BATCH_VIEW_KINDS, FUSIBLE_INTO_MERGE, INPLACE_KINDS, MERGE_KINDS, VIEW_KINDS, fold_merge_activations,
)
from keydnn.backends.numba_cpu.codegen.refusals import LayoutUnsupported, Unsupported
from keydnn.backends.numba_cpu.codegen.value_types import value_types
from keydnn.ir.graph import Graph, Node

__all__ = ["Val", "Arr", "Stage", "EmitContext", "Program", "generate", "Unsupported", "LayoutUnsupported", "GRAIN",
           "VIEW_KINDS", "BATCH_VIEW_KINDS", "MERGE_KINDS", "FUSIBLE_INTO_MERGE", "INPLACE_KINDS",
           "fold_merge_activations", "ALIGN", "aligned", "CONV_GRAIN"]

logger = logging.getLogger(__name__)

#: Floating-point work (flops or element moves) below which a block is not split further.
GRAIN = 1 << 15
#: The same for a convolution's multiply-adds (GEMM work runs several times faster per flop than data moves).
CONV_GRAIN = 4 * GRAIN
#: Arena buffers and thread scratch start at multiples of this many elements, and the arena itself at a 64-byte
#: boundary: a vector load straddling two cache lines costs two, and numpy's allocator aligns to 16 bytes only.
ALIGN = 16


def aligned(elements: int) -> int:
    """``elements`` rounded up to a multiple of ``ALIGN``."""
    return -(-elements // ALIGN) * ALIGN


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
    """One IR value as the generated code sees it.

    ``fold``: rows of the value per graph sample. A value inside ``TimeDistributed`` (time folded into the
    batch by ``fold_time``) has ``N * T`` rows of shape ``sample``, stored exactly where the unfolded
    ``(N, T, ...)`` value is; its node's stages run with ``N`` standing for those ``N * T`` rows
    (``Stage.fold``), so every emitter handles it unchanged.
    """

    name: str
    batched: bool
    sample: tuple[int, ...]  # shape without the leading (batch) axis
    lead: int  # leading dim when not batched
    storage: Optional[Storage] = None
    fold: int = 1

    @property
    def size(self) -> int:
        """Elements of one row (one sample, or one time step of a sample where ``fold > 1``)."""
        return math.prod(self.sample)

    @property
    def per_sample(self) -> int:
        """Elements per graph sample: its storage's size in the arena's per-sample units."""
        return self.fold * self.size

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
        if self.fold > 1:  # ``N`` counts folded rows in this value's stages (``Stage.fold``): N // fold samples
            return f"N // {self.fold} * {st.offset}"
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
    #: rows per graph sample of the node's values (``Val.fold``): the stage runs with ``N`` set to ``N * fold``
    fold: int = 1


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
        #: A conv2d's operand before the zero-stuffing its stage runs itself (``emit_convt.dilate_folds``).
        self.unstuffed: Optional[Val] = None

    def weight(self, array: np.ndarray) -> int:
        """Append ``array`` (C order) to ``W``; its offset. A view such as a transposed packing is kept as it
        is and copied once, straight into the blob (flattening it here copied every packed weight twice)."""
        return self._gen.add_blob(self._gen.w_parts, "w_len", np.asarray(array, dtype=self.dtype))

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
    info = value_types(graph, sample_shapes, batched)
    vals = {name: Val(name, b, s, lead, fold=fold) for name, (b, s, lead, fold) in info.items()}
    from keydnn.backends.numba_cpu.codegen.storage import assign_storage

    folded = fold_merge_activations(graph)
    from keydnn.backends.numba_cpu.codegen.emit_convt import dilate_folds

    stuffed = dilate_folds(graph, graph.weights)  # zero-stuffing runs inside the transposed conv after it
    plan = assign_storage(graph, vals, views=frozenset(folded) | frozenset(stuffed))
    by_name = {node.name: node for node in graph.nodes}
    fused = {merge.name: by_name[act].op for act, merge in folded.items()}
    unstuffed = {conv.name: vals[by_name[d].inputs[0]] for d, conv in stuffed.items()}
    for node in graph.nodes:
        if (node.op.kind in VIEW_KINDS or node.op.kind in BATCH_VIEW_KINDS or node.name in folded
                or node.name in stuffed):
            continue
        emit = emitters.get(node.op.kind)
        if emit is None:
            raise Unsupported(f"node {node.name} ({node.op.kind}): no code generator for this op")
        ctx = EmitContext(gen, node, [vals[i] for i in node.inputs if i in vals], vals[node.outputs[0].name])
        ctx.fused = fused.get(node.name)
        ctx.unstuffed = unstuffed.get(node.name)
        start = len(gen.stages)
        emit(ctx)
        fold = vals[node.outputs[0].name].fold
        for st in gen.stages[start:]:
            st.description = f"{node.name}: {st.description}"
            if fold > 1:  # the stage's N counts the folded rows; its work stays per graph sample
                st.fold, st.work = fold, st.work * fold
    for out_index, src, size in plan.copies:
        v = vals[src]
        ctx = EmitContext(gen, graph.nodes[0] if graph.nodes else None, [], v)
        gen.stages.append(Stage(f"output {out_index} <- %{src}", [
            ctx.call("copy_flat", v, v.at(), Arr(f"y{out_index}"), f"n * {size}", size)], batched=v.batched,
            work=size))
    from keydnn.backends.numba_cpu.codegen.source import render

    source = render(graph, gen, plan, cache=cache, profile=profile, shared=shared)

    def blob(parts: list, dtype_) -> np.ndarray:
        # 64-byte aligned: blob offsets are multiples of 16 elements so that packed weight panels start on a
        # cache line, which holds only if the blob does (numpy aligns to 16 bytes; a dense layer whose every
        # vector load straddled two lines ran at 80% of its speed, measured). Parts are copied in and released
        # one at a time: ``np.concatenate`` held every part and the whole blob at once, twice a large model's
        # weights (the pages of ``out`` are touched only as they fill).
        size = sum(p.size for p in parts) + 64
        raw = np.empty(size + 64 // np.dtype(dtype_).itemsize, dtype=dtype_)
        skip = (-raw.ctypes.data % 64) // raw.itemsize
        out = raw[skip:skip + size]
        pos = 0
        for i, part in enumerate(parts):
            out[pos:pos + part.size].reshape(part.shape)[...] = part  # C order, as ``reshape(-1)`` would give
            pos += part.size
            parts[i] = None
        out[pos:] = 0
        parts.clear()
        return out

    work = sum(st.work for st in gen.stages)
    descriptions = [st.description for st in gen.stages]
    return Program(
        source=source, weights=blob(gen.w_parts, dtype), params=blob(gen.d_parts, np.float64),
        tables=blob(gen.t_parts, np.int64), arena_per_sample=plan.per_sample, arena_fixed=plan.fixed,
        scratch_per_thread=gen.scratch, n_stages=len(gen.stages), work_per_sample=work,
        outputs=plan.outputs, thunks=list(gen.thunks), dtype=dtype, stages=descriptions,
        state_extra=gen.state_extra, stage_functions=list(gen.stage_functions),
    )

