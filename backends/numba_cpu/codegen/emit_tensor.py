"""Code generators for the tensor-math ops of issue 18: matmul, bias_softmax, layer_norm, reduce, unary,
binary, slice and resize2d.

* ``matmul`` (both operands activations or constants, leading axes broadcast,
  ``transpose_b``, ``scale``): one item per (sample, leading index, block of
  rows); the item packs its ``B`` into thread scratch in the dense
  micro-kernels' panel layout (``4L`` columns, the scale folded in: packing
  costs ``K * N`` element moves against ``2 * rows * K * N`` flops) and runs
  the same register tiles as ``dense`` over its rows.
* ``layer_norm``: one pass per row for trailing axes (statistics, then the
  output), any other axis set through ``reduction_tables``'s offsets.
* ``bias_softmax``: per row, biases added through a table of per-row bias
  offsets (the mask's broadcast over heads and queries), then the softmax.
* ``binary``: collapsed broadcast strides, innermost rows per item; ``slice``
  is ``transpose_flat``'s strided gather; ``resize2d`` walks output rows with
  the per-axis tap tables of ``resize_taps``.

Operands that are constants go into the weight blob ``W`` (unbatched).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from keydnn.backends.broadcast import collapse_broadcast
from keydnn.backends.numba_cpu.codegen.program import GRAIN, Arr, EmitContext, Stage, Unsupported, Val
from keydnn.backends.numba_cpu.codegen.target import current_target
from keydnn.backends.numba_cpu.codegen.ukernel_source import kernel_name
from keydnn.ir.ops.reduce import norm_axes, reduction_tables
from keydnn.ir.ops.resize import resize_taps

__all__ = ["EMITTERS_TENSOR", "HELPERS_TENSOR"]

logger = logging.getLogger(__name__)

_M = "helpers_tensor"
#: Helpers of ``cg_kernels_tensor`` (registered into ``cg_thunks.HELPERS``): name -> (module, parameter kinds).
HELPERS_TENSOR: dict[str, tuple[str, str]] = {
    "pack_panels": (_M, "aiiiiii" + "ai" + "f"),
    "ln_rows": (_M, "aiaiiii" + "dii" + "fiii"),
    "ln_lanes": (_M, "aiai" + "tii" + "iii" + "dii" + "fiii"),
    "reduce_lanes": (_M, "aiai" + "tii" + "iiii"),
    "unary_span": (_M, "aiaiii" + "ff"),
    "binary_rows": (_M, "aiaiai" + "tiii" + "iiii"),
    "bias_softmax_rows": (_M, "aiaiiii" + "ai" + "tii" + "ai" + "ii" + "i"),
    "resize_rows": (_M, "aiai" + "iiiiii" + "tii" + "dii" + "iii"),
}
#: Rows of a matmul item: enough to amortize packing B (a 64-row block pays 1/128 of its flops for it).
MATMUL_ROWS = 64
#: Unary functions that cost about one vector op per element (the rest call libm per element).
_CHEAP_UNARY = frozenset({"neg", "abs", "square", "clip", "hard_tanh", "sparse_sigmoid", "hard_silu", "floor", "ceil"})


def _blocks(work: float, split: int) -> int:
    return max(1, min(split, math.ceil(work / GRAIN)))


@dataclass
class _Operand:
    """An operand as the generated code reads it: array, offset of sample ``n``, shape aligned to the
    output's sample axes."""

    array: object  # Val or Arr("W")
    batched: bool
    sample: tuple[int, ...]
    base: str = "0"
    size: int = 0

    def at(self, n: str = "n") -> str:
        if isinstance(self.array, Val):
            return self.array.at(n)
        return self.base


def _operands(ctx: EmitContext) -> list[tuple[str, object]]:
    """Per node input: ("val", Val) or ("const", ndarray), in order."""
    weights = ctx._gen.graph.weights
    vals = iter(ctx.ins)
    out = []
    for name in ctx.node.inputs:
        if name in weights:
            out.append(("const", np.asarray(weights[name])))
        else:
            out.append(("val", next(vals)))
    return out


def _operand(ctx: EmitContext, kind: str, obj, rank: int) -> _Operand:
    """``obj`` (a Val or a constant) seen against an output of full rank ``rank``: its sample-level shape
    right-aligned to ``rank - 1`` axes (an operand of lower rank than the output is never batched)."""
    if kind == "const":
        full = tuple(int(d) for d in obj.shape)
        off = ctx.weight(obj)
        batched, arr, base = False, Arr("W"), str(off)
    else:
        full = ((1,) if not obj.batched else (-1,)) + tuple(obj.sample)
        batched, arr, base = obj.batched, obj, "0"
    if len(full) > rank:
        raise Unsupported(f"operand of rank {len(full)} against a result of rank {rank}")
    if len(full) == rank:
        if not batched and full[0] != 1:
            raise Unsupported("an operand's leading axis is not the batch axis")
        sample = full[1:]
    else:
        if batched:
            raise Unsupported("a batched operand of lower rank than the result")
        sample = full
    sample = (1,) * (rank - 1 - len(sample)) + tuple(sample)
    return _Operand(arr, batched, sample, base, math.prod(sample))


def _strides(shape: tuple[int, ...]) -> list[int]:
    return [math.prod(shape[i + 1:]) for i in range(len(shape))]


# -- matmul -----------------------------------------------------------------------------------------------------
def emit_matmul(ctx: EmitContext) -> None:
    op, y = ctx.op, ctx.out
    rank = len(y.sample) + 1
    (kx, ox), (ky, oy) = _operands(ctx)
    a, b = _operand(ctx, kx, ox, rank), _operand(ctx, ky, oy, rank)
    m, n_cols = y.sample[-2], y.sample[-1]
    k = a.sample[-1]
    lead = y.sample[:-2]
    n_lead = math.prod(lead)
    lanes = ctx.lanes
    nb = 4 * lanes
    panels = -(-n_cols // nb)
    tile = current_target().gemm_rows
    rows_item = max(tile, MATMUL_ROWS // tile * tile)
    row_blocks = -(-m // rows_item)
    scr = ctx.scratch(panels * nb * k)
    # leading offsets of each operand per output leading index (0 along broadcast axes)
    a_st, b_st = _strides(a.sample), _strides(b.sample)
    lead_a = [0 if a.sample[i] == 1 else a_st[i] for i in range(len(lead))]
    lead_b = [0 if b.sample[i] == 1 else b_st[i] for i in range(len(lead))]

    def offset(lst: list[int], var: str) -> str:
        if not lead or not any(lst):
            return "0"
        terms, rem = [], var
        for i in range(len(lead) - 1, -1, -1):
            if lst[i]:
                terms.append(f"(({rem}) // {math.prod(lead[i + 1:])} % {lead[i]}) * {lst[i]}")
        return " + ".join(terms)

    b_rs, b_cs = (1, k) if op.transpose_b else (n_cols, 1)
    half = 2 * lanes

    def call(mr: int, nv: int, off: int) -> str:
        return ctx.call(kernel_name(mr, nv, lanes), k, a.array, f"xa + r * {k}", k, Arr("A"), f"{scr} + jb * {k * nb} + {off}",
                        y, f"yo + r * {n_cols} + jb * {nb} + {off}", n_cols, mr, f"cols - {off}", Arr("A"), scr, 0, 0,
                        0.0, 0.0, 0.0, 0.0)

    per = n_lead * row_blocks
    body = [
        f"n = it // {per}",
        f"rest = it - n * {per}",
        f"li = rest // {row_blocks}",
        f"rb = rest - li * {row_blocks}",
        f"xa = {a.at()} + {offset(lead_a, 'li')}",
        f"yo = {y.at()} + li * {m * n_cols}",
        ctx.call("pack_panels", b.array, f"{b.at()} + {offset(lead_b, 'li')}", b_rs, b_cs, k, n_cols, nb,
                 Arr("A"), scr, float(op.scale)),
        f"r1 = min({m}, (rb + 1) * {rows_item})",
        f"for jb in range({panels}):",
        f"    cols = min({nb}, {n_cols} - jb * {nb})",
        f"    r = rb * {rows_item}",
        f"    while r + {tile} <= r1:",
        f"        {call(tile, 2, 0)}",
        f"        if cols > {half}:",
        f"            {call(tile, 2, half)}",
        f"        r += {tile}",
        "    if r + 4 <= r1:",
        f"        {call(4, 2, 0)}",
        f"        if cols > {half}:",
        f"            {call(4, 2, half)}",
        "        r += 4",
        "    while r < r1:",
        f"        {call(1, 4, 0)}",
        "        r += 1",
    ]
    rows = "N" if y.batched else "1"
    work = 2.0 * m * k * n_cols * n_lead
    ctx.stage(Stage(f"matmul {m}x{k}x{n_cols}{' b^T' if op.transpose_b else ''} x{n_lead}", body, batched=y.batched,
                    items=f"{rows} * {per}", work=work))


# -- normalization and reductions ----------------------------------------------------------------------------------
def _lane_split(rows: int, cost: float) -> int:
    return _blocks(rows * cost, rows)


def emit_layer_norm(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    rank = len(x.sample) + 1
    axes = tuple(sorted(norm_axes(op.axes, rank)))
    full = (1,) + x.sample
    lane_base, red_off = reduction_tables(full, axes)
    length = red_off.size
    gamma, beta = ctx.constant(1), ctx.constant(2)

    def per_element(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, np.float64)
        b = np.broadcast_to(p.reshape(() if p.size == 1 else p.shape), x.sample)
        return b.reshape(-1)[red_off]

    g_off, b_off = ctx.param64(per_element(gamma)), ctx.param64(per_element(beta))
    args = (float(op.epsilon), int(op.center), {"variance": 0, "mean_square": 1, "sum_square": 2}[op.statistic],
            int(op.eps_mode == "max"))
    lanes = lane_base.size
    trailing = axes == tuple(range(rank - len(axes), rank))
    if trailing:
        body = [ctx.call("ln_rows", x, x.at(), y, y.at(), "lo", "hi", length, Arr("D"), g_off, b_off, *args)]
        desc = f"layer_norm rows={lanes}x{length}"
    else:
        lb, ro = ctx.table(lane_base), ctx.table(red_off)
        body = [ctx.call("ln_lanes", x, x.at(), y, y.at(), Arr("T"), lb, ro, "lo", "hi", length, Arr("D"), g_off,
                         b_off, *args)]
        desc = f"layer_norm axes={list(axes)} lanes={lanes}"
    work = 4.0 * x.size
    ctx.stage(Stage(desc, body, batched=y.batched, split=lanes, max_blocks=_lane_split(lanes, 4.0 * length),
                    work=work))


def emit_reduce(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    rank = len(x.sample) + 1
    axes = tuple(sorted(norm_axes(op.axes, rank)))
    lane_base, red_off = reduction_tables((1,) + x.sample, axes)
    length, lanes = red_off.size, lane_base.size
    lb = ctx.table(lane_base)
    ro = -1 if np.array_equal(red_off, np.arange(length)) else ctx.table(red_off)
    mode = {"mean": 0, "sum": 1, "max": 2, "min": 3}[op.mode]
    body = [ctx.call("reduce_lanes", x, x.at(), y, y.at(), Arr("T"), lb, ro, "lo", "hi", length, mode)]
    ctx.stage(Stage(f"reduce {op.mode} axes={list(axes)}", body, batched=y.batched, split=lanes,
                    max_blocks=_lane_split(lanes, float(length)), work=float(x.size)))


# -- elementwise ---------------------------------------------------------------------------------------------------
def emit_unary(ctx: EmitContext) -> None:
    from keydnn.ir.functions import FUNCTION_CODES as UNARY_CODES

    op, x, y = ctx.op, ctx.ins[0], ctx.out
    cost = 1.0 if op.function in _CHEAP_UNARY else 16.0
    body = [ctx.call("unary_span", x, f"{x.at()} + lo", y, f"{y.at()} + lo", "hi - lo", UNARY_CODES[op.function],
                     float(op.a), float(op.b))]
    ctx.stage(Stage(op.function, body, batched=y.batched, split=x.size, max_blocks=_blocks(x.size * cost, x.size),
                    work=x.size * cost))


def emit_binary(ctx: EmitContext) -> None:
    from keydnn.ir.functions import BINARY_CODES

    op, y = ctx.op, ctx.out
    rank = len(y.sample) + 1
    (k0, o0), (k1, o1) = _operands(ctx)
    a, b = _operand(ctx, k0, o0, rank), _operand(ctx, k1, o1, rank)
    if y.sample:
        dims, (sa, sb) = collapse_broadcast(y.sample, [a.sample, b.sample])
    else:
        dims, (sa, sb) = [1], ([0], [0])
    d_off, a_off, b_off = ctx.table(dims), ctx.table(sa), ctx.table(sb)
    rows = math.prod(dims[:-1])
    work = 2.0 * y.size
    body = [ctx.call("binary_rows", a.array, a.at(), b.array, b.at(), y, y.at(), Arr("T"), d_off, a_off, b_off,
                     len(dims), "lo", "hi", BINARY_CODES[op.function])]
    ctx.stage(Stage(f"{op.function} dims={dims}", body, batched=y.batched, split=max(1, rows),
                    max_blocks=_blocks(work, max(1, rows)), work=work))


def emit_bias_softmax(ctx: EmitContext) -> None:
    y = ctx.out
    rank = len(y.sample) + 1
    ops = _operands(ctx)
    if ops[0][0] != "val":
        raise Unsupported("bias_softmax of a constant")
    x = ops[0][1]
    length = y.sample[-1]
    rows = y.size // length
    lead = y.sample[:-1]
    idx = np.indices(lead).reshape(len(lead), -1) if lead else np.zeros((0, 1), dtype=np.int64)
    parts = []
    for kind, obj in ops[1:]:
        bo = _operand(ctx, kind, obj, rank)
        st = _strides(bo.sample)
        st = [0 if bo.sample[i] == 1 else st[i] for i in range(len(st))]
        base = (np.asarray(st[:-1], np.int64)[:, None] * idx).sum(axis=0) if lead else np.zeros(1, np.int64)
        parts.append((bo, ctx.table(base.astype(np.int64)), st[-1]))
    nb = len(parts)
    if nb == 1:
        parts.append(parts[0])
    (b1, t1, s1), (b2, t2, s2) = parts
    body = [ctx.call("bias_softmax_rows", x, x.at(), y, y.at(), "lo", "hi", length, b1.array, b1.at(), Arr("T"), t1,
                     s1, b2.array, b2.at(), t2, s2, nb)]
    work = 16.0 * y.size
    ctx.stage(Stage(f"bias_softmax rows={rows}x{length} ({nb} bias)", body, batched=y.batched, split=rows,
                    max_blocks=_blocks(work, rows), work=work))


# -- data movement ------------------------------------------------------------------------------------------------
def emit_slice(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    xs = _strides(x.sample)
    start = sum(s * st for s, st in zip(op.starts, xs))
    rank = len(y.sample)
    if y.size == 0:
        return
    shape_off = ctx.table(y.sample)
    stride_off = ctx.table([st * step for st, step in zip(xs, op.steps)])
    rows = y.size // y.sample[-1]
    body = [ctx.call("transpose_flat", x, f"{x.at()} + {start}", y, y.at(), Arr("T"), shape_off, stride_off, rank,
                     "lo", "hi")]
    ctx.stage(Stage(f"slice {list(op.starts)}:{list(op.stops)}:{list(op.steps)}", body, batched=y.batched,
                    split=rows, max_blocks=_blocks(2.0 * y.size, rows), work=float(y.size)))


def emit_resize2d(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    if op.layout == "NCHW":
        c, h, w = x.sample
        planes, b = c, 1
    else:
        h, w, c = x.sample
        planes, b = 1, c
    oh, ow = op.size
    ih, wh = resize_taps(h, oh, op.method, op.half_pixel)
    iw, ww = resize_taps(w, ow, op.method, op.half_pixel)
    taps = {"nearest": 1, "bilinear": 2, "bicubic": 4}[op.method]
    t_h, t_w = ctx.table(ih.reshape(-1)), ctx.table(iw.reshape(-1))
    d_h, d_w = ctx.param64(wh.reshape(-1)), ctx.param64(ww.reshape(-1))
    rows = planes * oh
    work = float(taps * taps * y.size)
    body = [ctx.call("resize_rows", x, x.at(), y, y.at(), planes, h, w, b, oh, ow, Arr("T"), t_h, t_w, Arr("D"), d_h,
                     d_w, taps, "lo", "hi")]
    ctx.stage(Stage(f"resize2d {op.method} {h}x{w}->{oh}x{ow}", body, batched=y.batched, split=rows,
                    max_blocks=_blocks(work, rows), work=work))


EMITTERS_TENSOR = {
    "matmul": emit_matmul,
    "layer_norm": emit_layer_norm,
    "reduce": emit_reduce,
    "unary": emit_unary,
    "binary": emit_binary,
    "bias_softmax": emit_bias_softmax,
    "slice": emit_slice,
    "resize2d": emit_resize2d,
}
