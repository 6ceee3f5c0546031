"""Code generators for the sequence ops: ``rnn``, ``embedding``, ``sequence_mask``, ``masking``,
``repeat_vector`` (issue 17).

The ``rnn`` node holds only the recurrence: its input projection is the
``dense`` node before it, which the dense emitter already runs as one GEMM
over all ``N * T`` rows, threaded over row blocks and column panels. The
recurrence is one stage whose items are blocks of ``gemm_rows`` batch rows
(8 on AVX-512): one ``cg_kernels_seq.rnn_rows`` call per item runs every time
step, with ``U`` packed in the dense micro-kernels' ``4L``-column panels (the
rows of a block share each panel load) and gates fused into one pass per
row. At batch 1 the item is the whole recurrence (time steps are sequential);
at batch 64 the eight blocks spread over the threads.

An ``embedding`` whose rows feed only a linear ``dense`` (a recurrent
layer's input projection) is folded: the dense node gathers rows of
``table @ kernel + bias``, computed once in float64 (``folded_projection``),
instead of running a matrix product over every token on every call.

Token ids: the generated code has one floating dtype per graph, so an
integer graph input (ids of any integer dtype) travels as int32 (float32
graphs) or int64 (float64 graphs) in the float array's storage; the
executable converts it and checks every id against the table it indexes
before the call (``index_checks``), raising a ``ValueError`` naming the layer,
the id and the table's range. Integer inputs may feed only ``embedding`` and
``sequence_mask`` (anything else makes the graph run on the per-op kernels).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from keydnn.backends.numba_cpu.codegen.emit_nn import EMITTERS_NN
from keydnn.backends.numba_cpu.codegen.program import Arr, EmitContext, Stage, Unsupported, aligned
from keydnn.backends.numba_cpu.codegen.codes import ACTIVATION_CODES, RELU0, TANH_COEFFS
from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.codegen.target import current_target
from keydnn.ir.graph import Graph, Node

__all__ = ["EMITTERS_SEQ", "INDEX_KINDS", "index_inputs", "index_checks", "TANH_COEFFS", "folded_projection"]

logger = logging.getLogger(__name__)

#: Op kinds that may read an integer (token id) graph input.
INDEX_KINDS = frozenset({"embedding", "sequence_mask"})
_CELLS = {"simple": 0, "lstm": 1, "gru": 2}
_RESULTS = {"output": 0, "state_h": 1, "state_c": 2}


def _is_index_dtype(dtype) -> bool:
    return np.dtype(dtype).kind in "iub"


def index_inputs(graph: Graph) -> set[str]:
    """Names of the graph's integer inputs (token ids). Raises ``Unsupported`` if one feeds anything but an
    ``embedding`` or ``sequence_mask`` (their storage holds ids, not values of the graph's dtype)."""
    names = {v.name for v in graph.inputs if v.type is not None and _is_index_dtype(v.type.dtype)}
    for node in graph.nodes:
        for pos, name in enumerate(node.inputs):
            if name in names and (node.op.kind not in INDEX_KINDS or pos != 0):
                raise Unsupported(f"integer input %{name} feeds {node.op.kind} node {node.name}")
    return names


def index_checks(graph: Graph) -> list[tuple[int, int, str]]:
    """(input position, table rows, node name) of every embedding reading a graph input: the executable
    checks those ids before each call."""
    positions = {v.name: i for i, v in enumerate(graph.inputs)}
    checks = []
    for node in graph.nodes:
        if node.op.kind == "embedding" and node.inputs[0] in positions:
            vocab = int(np.asarray(graph.weights[node.inputs[1]]).shape[0])
            checks.append((positions[node.inputs[0]], vocab, node.name))
    return checks


def _ids(ctx: EmitContext) -> tuple[str, int]:
    """(address expression, item size) of the ids operand: an integer graph input's storage, or (0, 0) for
    ids held as the graph's floats."""
    x = ctx.ins[0]
    spec = {v.name: v for v in ctx._gen.graph.inputs}.get(ctx.node.inputs[0])
    if spec is None or not _is_index_dtype(spec.type.dtype):
        return "0", 0
    ctx._gen.arrays.add(x.array)
    return f"p_{x.array}", ctx.dtype.itemsize


def _cell_code(name: str) -> int:
    return RELU0 if name == "relu" else ACTIVATION_CODES[name]


def _pack(ctx: EmitContext, u: np.ndarray, nb: int) -> int:
    """``u`` (K, m) packed in panels of ``nb`` columns, ``[panel][k][nb]`` (zeros past column m)."""
    k, m = u.shape
    panels = -(-m // nb)
    packed = np.zeros((k, panels * nb), dtype=np.float64)
    packed[:, :m] = u
    return ctx.weight(packed.reshape(k, panels, nb).transpose(1, 0, 2))


def _padded(ctx: EmitContext, v: np.ndarray, nb: int) -> int:
    out = np.zeros(-(-v.size // nb) * nb + nb, dtype=np.float64)
    out[:v.size] = v
    return ctx.weight(out)


def emit_rnn(ctx: EmitContext) -> None:
    op, y = ctx.op, ctx.out
    x, rest = ctx.ins[0], list(ctx.ins[1:])
    if len(ctx.ins) != len(ctx.node.inputs) - 2:
        raise Unsupported("rnn with a recurrent kernel or bias that is not a constant")
    if not x.batched or not y.batched or any(not v.batched for v in rest):
        raise Unsupported("rnn operands without the batch axis")
    u, rb = ctx.constant(1), ctx.constant(2)
    n = op.units
    g = op.gates * n
    steps = x.sample[0]
    split = op.cell == "gru" and not op.reset_after
    gm = 2 * n if split else g
    nb = 4 * dw_lanes()
    u_off = _pack(ctx, u[:, :gm], nb)
    b_off = _padded(ctx, np.asarray(rb[:gm]), nb)
    u2_off, b2_off = (_pack(ctx, u[:, 2 * n:], nb), _padded(ctx, np.asarray(rb[2 * n:]), nb)) if split else (u_off, b_off)
    k_off = ctx.weight(np.asarray(TANH_COEFFS))
    mask = rest.pop(0) if op.masked else None
    h0 = rest[0] if rest else None
    c0 = rest[1] if len(rest) > 1 else None
    rows = current_target().gemm_rows
    zs = aligned(-(-g // nb) * nb)
    scr = ctx.scratch(4 * rows * aligned(n) + rows * zs)
    dummy = (x, "0", 0)
    m_arr, m_off, m_ss = (mask, mask.base(), mask.size) if mask is not None else dummy
    h_arr, h_off, h_ss = (h0, h0.base(), h0.size) if h0 is not None else dummy
    c_arr, c_off = (c0, c0.base()) if c0 is not None else (x, "0")
    precise = int(ctx.dtype != np.float32)
    call = ctx.call(
        "rnn_rows", x, x.base(), x.size, Arr("W"), u_off, u2_off, b_off, b2_off, k_off, m_arr, m_off, m_ss,
        h_arr, h_off, h_ss, c_arr, c_off, y, y.base(), y.size, Arr("A"), scr, "it * rpi",
        "min(rpi, N - it * rpi)", steps, n, zs, _CELLS[op.cell], int(split), _cell_code(op.activation),
        _cell_code(op.recurrent_activation), int(op.go_backwards), int(op.restore_time_order),
        int(op.zero_output_for_mask), _RESULTS[op.result], int(op.return_sequences), int(mask is not None),
        int(h0 is not None), precise)
    # rows per item: a full tile, or fewer where that leaves a thread idle (batch 2..15 on two threads)
    setup = [f"rpi = max(1, min({rows}, (N + nthr - 1) // nthr))"]
    ctx.stage(Stage(f"rnn {op.cell} units={n} steps={steps} rows/item<={rows}", [call], items="(N + rpi - 1) // rpi",
                    setup=setup, work=float(2 * n * g * steps + 20 * g * steps)))


def folded_projection(graph: Graph, emb: Node) -> Optional[Node]:
    """The ``dense`` node whose product with ``emb``'s rows is folded into a projected table, or None.

    An embedding feeding only a linear ``dense`` (a recurrent layer's input projection, or any Dense after
    an Embedding) is a gather from ``table @ kernel + bias``, computed once in float64 when the code is
    generated: the per-call matrix product over every token (at batch 64 x 100 tokens, 420 M multiply-adds
    for a 128 -> 512 projection) becomes a row copy. Only when the projected table is at most
    ``PROJECT_MAX_GROWTH`` times the embedding table's size and at most ``PROJECT_MAX_BYTES``.
    """
    out = emb.outputs[0].name
    if out in graph.outputs or emb.inputs[0] not in {v.name for v in graph.inputs}:
        return None
    users = [n for n in graph.nodes if out in n.inputs]
    if len(users) != 1 or users[0].op.kind != "dense" or users[0].inputs[0] != out or users[0].inputs.count(out) != 1:
        return None
    dense = users[0]
    if dense.op.activation is not None or any(name not in graph.weights for name in dense.inputs[1:]):
        return None
    vocab, dim = np.asarray(graph.weights[emb.inputs[1]]).shape
    width = np.asarray(graph.weights[dense.inputs[1]]).shape[1]
    itemsize = np.dtype(emb.outputs[0].type.dtype).itemsize if emb.outputs[0].type is not None else 4
    if width > PROJECT_MAX_GROWTH * dim or vocab * width * itemsize > PROJECT_MAX_BYTES:
        return None
    return dense


#: Limits of ``folded_projection``: growth of the table (columns of the projection over the embedding's), bytes.
PROJECT_MAX_GROWTH = 4
PROJECT_MAX_BYTES = 256 << 20
_PROJECTED: dict[tuple[int, ...], tuple] = {}


def _projected_table(graph: Graph, emb: Node, dense: Node) -> np.ndarray:
    """``table @ kernel + bias`` in float64, computed once per set of weight arrays (each compiled sequence
    length generates code again, and a 20000 x 512 table costs a noticeable fraction of a second)."""
    arrays = [np.asarray(graph.weights[emb.inputs[1]])] + [np.asarray(graph.weights[n]) for n in dense.inputs[1:]]
    key = tuple(id(a) for a in arrays)
    hit = _PROJECTED.get(key)
    if hit is not None:
        return hit[-1]
    table = arrays[0].astype(np.float64) @ arrays[1].astype(np.float64)
    if len(arrays) > 2:
        table += arrays[2].astype(np.float64)
    if len(_PROJECTED) >= 4:
        _PROJECTED.pop(next(iter(_PROJECTED)))
    _PROJECTED[key] = (*arrays, table)  # the arrays stay referenced, so their ids are not reused
    return table


def _gather(ctx: EmitContext, ids_name: str, table: np.ndarray, what: str) -> None:
    """y[sample] = rows of ``table`` picked by the ids of graph input ``ids_name``."""
    y = ctx.out
    vocab, dim = table.shape
    graph = ctx._gen.graph
    pos = next(i for i, v in enumerate(graph.inputs) if v.name == ids_name)
    array = f"x{pos}"  # a graph input's storage (cg_plan)
    count = y.size // dim
    if _is_index_dtype(graph.inputs[pos].type.dtype):
        ctx._gen.arrays.add(array)
        addr, isz = f"p_{array}", ctx.dtype.itemsize
    else:
        addr, isz = "0", 0
    t_off = ctx.weight(table)
    body = [ctx.call("embed_rows", addr, isz, Arr(array), f"n * {count}", count, Arr("W"), t_off, vocab, dim, y,
                     y.at())]
    ctx.stage(Stage(f"{what} {vocab}x{dim}", body, batched=y.batched, work=float(y.size)))


def emit_embedding(ctx: EmitContext) -> None:
    table = ctx.constant(1)
    graph = ctx._gen.graph
    if ctx.node.inputs[0] not in {v.name for v in graph.inputs}:
        raise Unsupported("embedding ids that are not a graph input (their range is checked on the way in)")
    if not ctx.ins[0].batched:
        raise Unsupported("embedding ids without the batch axis")
    if folded_projection(graph, ctx.node) is not None:
        return  # the dense after it gathers from the projected table (emit_dense_after_embedding)
    _gather(ctx, ctx.node.inputs[0], table, "embedding")


def emit_dense_after_embedding(ctx: EmitContext) -> None:
    """``dense``: a gather from the projected table where it follows a folded embedding, else the GEMM."""
    graph = ctx._gen.graph
    src = next((n for n in graph.nodes if n.outputs[0].name == ctx.node.inputs[0]), None)
    if src is not None and src.op.kind == "embedding" and folded_projection(graph, src) is ctx.node:
        _gather(ctx, src.inputs[0], _projected_table(graph, src, ctx.node), "embedding @ dense (projected table)")
        return
    EMITTERS_NN["dense"](ctx)


def emit_sequence_mask(ctx: EmitContext) -> None:
    x, y = ctx.ins[0], ctx.out
    addr, isz = _ids(ctx)
    steps = x.sample[0]
    feats = x.sample[1] if len(x.sample) == 2 else 0
    body = [ctx.call("seq_mask_rows", addr, isz, x, x.at(), steps, feats, float(ctx.op.mask_value), y, y.at())]
    ctx.stage(Stage("sequence_mask", body, batched=y.batched, work=float(x.size)))


def emit_masking(ctx: EmitContext) -> None:
    x, y = ctx.ins[0], ctx.out
    steps, feats = x.sample
    body = [ctx.call("masking_rows", x, x.at(), steps, feats, float(ctx.op.mask_value), y, y.at())]
    ctx.stage(Stage("masking", body, batched=y.batched, work=float(x.size)))


def emit_repeat_vector(ctx: EmitContext) -> None:
    x, y = ctx.ins[0], ctx.out
    body = [ctx.call("repeat_rows", x, x.at(), x.size, ctx.op.n, y, y.at())]
    ctx.stage(Stage(f"repeat_vector x{ctx.op.n}", body, batched=y.batched, work=float(y.size)))


EMITTERS_SEQ = {
    "rnn": emit_rnn,
    "embedding": emit_embedding,
    "dense": emit_dense_after_embedding,
    "sequence_mask": emit_sequence_mask,
    "masking": emit_masking,
    "repeat_vector": emit_repeat_vector,
}
