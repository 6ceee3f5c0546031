"""Code generators for dense and pooling, and ``EMITTERS_NN``, the one table of the compute ops' emitters
(conv2d's live in ``emit_conv`` and ``emit_conv_vectors``, their shared epilogue and tiling rules in
``emit_common``).

dense packs its weight into panels of ``2L`` columns (``mkn_*`` kernels); rows
(samples) go through the 8-row kernel in depth blocks that fit L1, then 4-row,
then single-row ones (a GEMV at batch 1), one item per (row block, pair of
panels).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from keydnn.backends.numba_cpu.codegen.dense_kernel_source import dense_kernel_name
from keydnn.backends.numba_cpu.codegen.emit_common import (
    act_args, conv_rows, kernel_activation, post_activation, require_nchw,
)
from keydnn.backends.numba_cpu.codegen.emit_conv import emit_conv2d
from keydnn.backends.numba_cpu.codegen.program import GRAIN, Arr, EmitContext, LayoutUnsupported, Stage
from keydnn.backends.numba_cpu.codegen.target import current_target

__all__ = ["EMITTERS_NN", "emit_dense", "dense_depth_block"]

logger = logging.getLogger(__name__)

#: Rows of a dense work item.
DENSE_ROWS = 32
#: Rows of the largest dense tile on 32-register targets (24 accumulators).
DENSE_BIG_TILE = 12


def dense_depth_block(k: int, panel_bytes_per_row: int) -> int:
    """Depth rows of a dense weight block: the block of one two-vector panel fills at most the target's L1
    (the tile's sample rows stream beside it), in equal blocks."""
    cap = max(32, current_target().l1_bytes // panel_bytes_per_row)
    blocks = -(-k // cap)
    return -(-k // blocks)


def emit_dense(ctx: EmitContext) -> None:
    """Weights packed in panels of ``2L`` columns (``[panel][k][2L]``, ``mkn_*`` kernels); a work item is a
    block of rows (samples) x ``4L`` columns (two panels). Its full tiles run the depth in blocks that fit L1,
    each block over every row tile before the next (partial sums stay in the output: bias with the first
    block, activation with the last); leftover rows go through the 4-row kernel, then the single-row one (a
    GEMV at batch 1: both panels, four accumulator chains, the whole depth)."""
    x, y = ctx.ins[0], ctx.out
    w = ctx.constant(1)
    b = ctx.constant(2)
    k, m = w.shape
    lanes = ctx.lanes
    half = 2 * lanes
    nb = 2 * half
    groups = -(-m // nb)
    packed = np.zeros((k, groups * nb), dtype=ctx.dtype)
    packed[:, :m] = w
    w_off = ctx.weight(packed.reshape(k, 2 * groups, half).transpose(1, 0, 2))
    ps = k * half  # one panel
    if b is not None:
        bias = np.zeros(groups * nb, dtype=ctx.dtype)
        bias[:m] = b
        b_off, bias_mode = ctx.weight(bias), 2
    else:
        b_off, bias_mode = w_off, 0
    code, params, act = kernel_activation(ctx.op)
    per_sample_rows = math.prod(x.sample[:-1])
    rows = f"N * {per_sample_rows}" if x.batched else str(per_sample_rows)
    xb, yb = x.base(), y.base()
    tile = conv_rows()  # two-vector tile rows: as many as the registers hold (8 on AVX-512, 6 on AVX2)
    dense_rows = tile * (DENSE_ROWS // tile)
    kc = dense_depth_block(k, half * ctx.dtype.itemsize)
    # row tiles, largest first: 12 rows where 32 registers hold 24 accumulators (a tenth faster than 8 at
    # depth 512-4096, measured on Sapphire Rapids), then the target's two-vector tile, then 4 rows
    sizes = ([DENSE_BIG_TILE] if current_target().registers >= 32 else []) + [tile]

    def call(mr: int, nv: int, depth: str, k0: str, h: str, mode: str, act_code: str) -> str:
        return ctx.call(dense_kernel_name(mr, nv, lanes), depth, x, f"{xb} + r * {k} + {k0}", k, Arr("W"),
                        f"wp + {h} * {ps} + {k0} * {half}", ps, y, f"{yb} + r * {m} + col0 + {h} * {half}", m, mr,
                        f"cols - {h} * {half}", Arr("W"), f"{b_off} + col0 + {h} * {half}", mode, act_code, *params)

    body = [f"rb = it // {groups}", f"jb = it - rb * {groups}", f"r0 = rb * {dense_rows}",
            f"r1 = min(rows, r0 + {dense_rows})"]
    prev = "r0"
    for i, mr in enumerate(sizes):  # e{i}: where the tiles of sizes[i] rows end
        body.append(f"e{i} = {prev} + (r1 - {prev}) // {mr} * {mr}")
        prev = f"e{i}"
    body += [
        f"r4 = {prev} + 4 if {prev} + 4 <= r1 else {prev}",
        f"col0 = jb * {nb}",
        f"cols = min({nb}, {m} - col0)",
        f"wp = {w_off} + jb * {2 * ps}",
        f"for k0 in range(0, {k}, {kc}):",
        f"    kk = min({kc}, {k} - k0)",
        f"    bm = 3 if k0 > 0 else {bias_mode}",
        f"    ac = {code} if k0 + {kc} >= {k} else 0",
        "    for h in range(2):",
        f"        if h * {half} < cols:",
        "            r = r0",
    ]
    for i, mr in enumerate(sizes):
        body += [f"            while r < e{i}:", f"                {call(mr, 2, 'kk', 'k0', 'h', 'bm', 'ac')}",
                 f"                r += {mr}"]
    body += [
        "            if r < r4:",
        f"                {call(4, 2, 'kk', 'k0', 'h', 'bm', 'ac')}",
        "r = r4",
        "while r < r1:",
        f"    {call(1, 4, str(k), '0', '0', str(bias_mode), str(code))}",
        "    r += 1",
    ]
    if post_activation(act):
        body += ["for rr in range(r0, r1):",
                 "    " + ctx.call("act_copy", y, f"{yb} + rr * {m} + col0", y, f"{yb} + rr * {m} + col0", "cols",
                                   *act_args(act))]
    work = 2.0 * k * m * per_sample_rows
    ctx.stage(Stage(f"dense {k}->{m} panels={2 * groups}x{half}" + (f" depth-blocks={kc}" if kc < k else ""), body,
                    batched=y.batched, setup=[f"rows = {rows}"],
                    items=f"((rows + {dense_rows - 1}) // {dense_rows}) * {groups}", work=work))


def _emit_window(ctx: EmitContext, helper: str) -> None:
    require_nchw(ctx)
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    c, h, w = x.sample
    _, oh, ow = y.sample
    kh, kw = op.kernel
    sh, sw = op.strides
    pt, _, pl, _ = op.pads
    body = [ctx.call(helper, x, f"{x.at()} + lo * {h * w}", y, f"{y.at()} + lo * {oh * ow}", "hi - lo",
                     h, w, oh, ow, kh, kw, sh, sw, pt, pl)]
    work = float(c * oh * ow * kh * kw)
    ctx.stage(Stage(f"{op.kind} {kh}x{kw}/{sh}x{sw}", body, batched=y.batched, split=c,
                    max_blocks=max(1, min(c, math.ceil(work / GRAIN))), work=work))


def emit_global_pool(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    if op.layout == "NCHW":
        c, h, w = x.sample
        helper = "mean_rows_flat" if op.kind == "global_avg_pool2d" else "max_rows_flat"
        call = ctx.call(helper, x, x.at(), y, y.at(), c, h * w)
    elif op.kind == "global_max_pool2d":
        h, w, c = x.sample
        call = ctx.call("max_cols_flat", x, x.at(), y, y.at(), h * w, c)
    else:
        raise LayoutUnsupported("global_avg_pool2d with layout NHWC (run canonicalize-layout)")
    ctx.stage(Stage(op.kind, [call], batched=y.batched, work=float(x.size)))


EMITTERS_NN = {
    "conv2d": emit_conv2d,
    "dense": emit_dense,
    "max_pool2d": lambda ctx: _emit_window(ctx, "max_pool_planes"),
    "avg_pool2d": lambda ctx: _emit_window(ctx, "avg_pool_planes"),
    "global_avg_pool2d": emit_global_pool,
    "global_max_pool2d": emit_global_pool,
}
