"""Code generators for the compute ops: conv2d and dense on the GEMM micro-kernels, and pooling.

conv2d (groups 1) is an im2col GEMM in strips: a work item unfolds a strip of
output pixels of one sample into a thread-private panel (padding, stride and
dilation resolved while packing; a 1x1 stride-1 conv reads its input as the
panel) and runs an ``8 x 2L`` micro-kernel over it for every block of 8
output channels, with bias and relu fused into the tile's store. The panel of
a strip stays in L2 and each ``K x 2L`` slab of it in L1 across the output
channel blocks. Grouped and depthwise filters take direct loops instead.

dense packs its weight into panels of ``4L`` columns; rows (samples) go
through the 8-row kernel, then 4-row, then single-row ones (a GEMV at batch
1), one item per (row block, column panel).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from keydnn.backends.numba_cpu.codegen import GRAIN, EmitContext, Stage, Unsupported
from keydnn.backends.numba_cpu.kernels_elementwise import LINEAR, RELU, RELU0, encode_activation
from keydnn.backends.numba_cpu.ukernel_source import kernel_name

__all__ = ["EMITTERS_NN", "kernel_activation", "post_activation", "panel_columns"]

logger = logging.getLogger(__name__)

#: Bytes a conv strip's panel may take (it should stay in L2).
PANEL_BYTES = 1 << 18
#: Rows of a dense work item.
DENSE_ROWS = 32


def kernel_activation(op) -> tuple[int, str, tuple]:
    """(micro-kernel act code, its params text, the full epilogue) for a fused activation."""
    act = encode_activation(getattr(op, "activation", None))
    code = act[0]
    if code == RELU0:
        return 1, "0.0, 0.0, 0.0, 0.0", act
    if code == RELU:
        return 2, ", ".join(repr(float(p)) for p in act[1:]), act
    return 0, "0.0, 0.0, 0.0, 0.0", act


def post_activation(act: tuple) -> bool:
    """Whether the epilogue must run after the micro-kernel's store (anything but relu / linear)."""
    return act[0] not in (LINEAR, RELU0, RELU)


def _require_nchw(ctx: EmitContext) -> None:
    layout = getattr(ctx.op, "layout", "NCHW")
    if layout != "NCHW":
        raise Unsupported(f"{ctx.op.kind} with layout {layout} (kernels are NCHW; run canonicalize-layout)")


def panel_columns(depth: int, pixels: int, slab: int, itemsize: int) -> int:
    """Strip width: whole slabs, as many as keep the panel within PANEL_BYTES, at most the image."""
    fit = max(slab, (PANEL_BYTES // (itemsize * max(depth, 1))) // slab * slab)
    return min(fit, -(-pixels // slab) * slab)


def _conv_gemm(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    w = ctx.constant(1)
    b = ctx.constant(2)
    o_ch, cg, kh, kw = w.shape
    c, h, wd = x.sample
    _, oh, ow = y.sample
    depth, pixels = cg * kh * kw, oh * ow
    lanes = ctx.lanes
    mr, slab = 8, 2 * lanes
    blocks = -(-o_ch // mr)
    packed = np.zeros((blocks * mr, depth), dtype=np.float64)
    packed[:o_ch] = np.asarray(w, dtype=np.float64).reshape(o_ch, depth)
    w_off = ctx.weight(packed.reshape(blocks, mr, depth).transpose(0, 2, 1))
    b_off = ctx.weight(b) if b is not None else w_off
    bias_mode = 1 if b is not None else 0
    code, params, act = kernel_activation(op)
    sh, sw = op.strides
    dh, dw = op.dilations
    pt, _, pl, _ = op.pads
    # a 1x1 stride-1 conv reads its input as the panel, unless the last strip's vectors would run past a
    # caller's array (arena buffers have slack)
    pointwise = kh == kw == sh == sw == 1 and op.pads == (0, 0, 0, 0) and (pixels % slab == 0 or x.array == "A")
    strip = panel_columns(depth, pixels, slab, ctx.dtype.itemsize) if not pointwise else \
        min(-(-pixels // slab) * slab, max(slab, 4096 // slab * slab))
    strips = -(-pixels // strip)
    mk = ctx.helper(kernel_name(mr, 2, lanes))
    xo, yo = x.at(), y.at()
    body = ["for s in range(lo, hi):", f"    p0 = s * {strip}", f"    np_ = min({strip}, {pixels} - p0)"]
    if pointwise:
        src, src_off, ldb = x.array, f"{xo} + p0", pixels
    else:
        ctx.helper("im2col_panel")
        scr = ctx.scratch(depth * strip)
        body.append(f"    im2col_panel({x.array}, {xo}, {c}, {h}, {wd}, {kh}, {kw}, {sh}, {sw}, {dh}, {dw}, {pt}, {pl}, "
                    f"{ow}, p0, np_, A, {scr}, {strip})")
        src, src_off, ldb = "A", scr, strip
    body += [
        f"    for j in range(0, np_, {slab}):",
        f"        for ob in range({blocks}):",
        f"            {mk}({depth}, W, {w_off} + ob * {depth * mr}, 1, {mr}, {src}, {src_off} + j, {ldb}, "
        f"{y.array}, {yo} + ob * {mr * pixels} + p0 + j, {pixels}, min({mr}, {o_ch} - ob * {mr}), np_ - j, "
        f"W, {b_off} + ob * {mr}, {bias_mode}, {code}, {params})",
    ]
    if post_activation(act):
        ctx.helper("act_copy")
        body += [f"    for o in range({o_ch}):",
                 f"        act_copy({y.array}, {yo} + o * {pixels} + p0, {y.array}, {yo} + o * {pixels} + p0, np_, "
                 f"{', '.join(repr(float(a)) if i else str(a) for i, a in enumerate(act))})"]
    work = 2.0 * o_ch * depth * pixels
    ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} gemm strips={strips}x{strip}", body, batched=y.batched,
                    split=strips, max_blocks=max(1, min(strips, math.ceil(work / (8 * GRAIN)))), work=work))


def _conv_direct(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    w = ctx.constant(1)
    b = ctx.constant(2)
    o_ch, cg, kh, kw = w.shape
    c, h, wd = x.sample
    _, oh, ow = y.sample
    og = o_ch // op.groups
    w_off = ctx.weight(w)
    b_off = ctx.weight(b) if b is not None else w_off
    sh, sw = op.strides
    dh, dw = op.dilations
    pt, _, pl, _ = op.pads
    act = encode_activation(op.activation)
    ctx.helper("conv_direct_planes")
    xo, yo = x.at(), y.at()
    body = [f"conv_direct_planes({x.array}, {xo}, {c}, {h}, {wd}, W, {w_off}, {b_off}, {int(b is not None)}, "
            f"{y.array}, {yo}, {oh}, {ow}, lo, hi, {cg}, {og}, {kh}, {kw}, {sh}, {sw}, {dh}, {dw}, {pt}, {pl})"]
    if act[0] != LINEAR:
        ctx.helper("act_copy")
        body.append(f"act_copy({y.array}, {yo} + lo * {oh * ow}, {y.array}, {yo} + lo * {oh * ow}, (hi - lo) * {oh * ow}, "
                    f"{act[0]}, {', '.join(repr(float(a)) for a in act[1:])})")
    work = 2.0 * o_ch * cg * kh * kw * oh * ow
    ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} groups={op.groups} direct", body, batched=y.batched,
                    split=o_ch, max_blocks=max(1, min(o_ch, math.ceil(work / (4 * GRAIN)))), work=work))


def emit_conv2d(ctx: EmitContext) -> None:
    _require_nchw(ctx)
    if ctx.op.groups == 1:
        _conv_gemm(ctx)
    else:
        _conv_direct(ctx)


def emit_dense(ctx: EmitContext) -> None:
    x, y = ctx.ins[0], ctx.out
    w = ctx.constant(1)
    b = ctx.constant(2)
    k, m = w.shape
    lanes = ctx.lanes
    nb = 4 * lanes
    panels = -(-m // nb)
    packed = np.zeros((k, panels * nb), dtype=np.float64)
    packed[:, :m] = w
    w_off = ctx.weight(packed.reshape(k, panels, nb).transpose(1, 0, 2))
    if b is not None:
        bias = np.zeros(panels * nb, dtype=np.float64)
        bias[:m] = b
        b_off, bias_mode = ctx.weight(bias), 2
    else:
        b_off, bias_mode = w_off, 0
    code, params, act = kernel_activation(ctx.op)
    per_sample_rows = math.prod(x.sample[:-1])
    rows = f"N * {per_sample_rows}" if x.batched else str(per_sample_rows)
    k8, k4, k1 = (ctx.helper(kernel_name(mr, nv, lanes)) for mr, nv in ((8, 2), (4, 2), (1, 4)))
    half = 2 * lanes
    xb, yb = x.base(), y.base()

    def call(kern: str, rows_: int, off: int) -> str:
        return (f"{kern}({k}, {x.array}, {xb} + r * {k}, {k}, 1, W, wp + {off}, {nb}, {y.array}, "
                f"{yb} + r * {m} + col0 + {off}, {m}, {rows_}, cols - {off}, W, {b_off} + col0 + {off}, {bias_mode}, "
                f"{code}, {params})")

    body = [
        f"rb = it // {panels}",
        f"jb = it - rb * {panels}",
        f"r = rb * {DENSE_ROWS}",
        f"r1 = min(rows, r + {DENSE_ROWS})",
        f"col0 = jb * {nb}",
        f"cols = min({nb}, {m} - col0)",
        f"wp = {w_off} + jb * {k * nb}",
        "while r + 8 <= r1:",
        f"    {call(k8, 8, 0)}",
        f"    if cols > {half}:",
        f"        {call(k8, 8, half)}",
        "    r += 8",
        "if r + 4 <= r1:",
        f"    {call(k4, 4, 0)}",
        f"    if cols > {half}:",
        f"        {call(k4, 4, half)}",
        "    r += 4",
        "while r < r1:",
        f"    {call(k1, 1, 0)}",
        "    r += 1",
    ]
    if post_activation(act):
        ctx.helper("act_copy")
        args = f"{act[0]}, {', '.join(repr(float(a)) for a in act[1:])}"
        body += [f"for rr in range(rb * {DENSE_ROWS}, r1):",
                 f"    act_copy({y.array}, {yb} + rr * {m} + col0, {y.array}, {yb} + rr * {m} + col0, cols, {args})"]
    work = 2.0 * k * m * per_sample_rows
    ctx.stage(Stage(f"dense {k}->{m} panels={panels}", [f"rows = {rows}", *body], batched=y.batched,
                    items=f"(({rows} + {DENSE_ROWS - 1}) // {DENSE_ROWS}) * {panels}", work=work))


def _emit_window(ctx: EmitContext, helper: str) -> None:
    _require_nchw(ctx)
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    c, h, w = x.sample
    _, oh, ow = y.sample
    kh, kw = op.kernel
    sh, sw = op.strides
    pt, _, pl, _ = op.pads
    ctx.helper(helper)
    body = [f"{helper}({x.array}, {x.at()} + lo * {h * w}, {y.array}, {y.at()} + lo * {oh * ow}, hi - lo, "
            f"{h}, {w}, {oh}, {ow}, {kh}, {kw}, {sh}, {sw}, {pt}, {pl})"]
    work = float(c * oh * ow * kh * kw)
    ctx.stage(Stage(f"{op.kind} {kh}x{kw}/{sh}x{sw}", body, batched=y.batched, split=c,
                    max_blocks=max(1, min(c, math.ceil(work / GRAIN))), work=work))


def emit_global_pool(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    if op.layout == "NCHW":
        c, h, w = x.sample
        helper = "mean_rows_flat" if op.kind == "global_avg_pool2d" else "max_rows_flat"
        call = f"{helper}({x.array}, {x.at()}, {y.array}, {y.at()}, {c}, {h * w})"
    elif op.kind == "global_max_pool2d":
        h, w, c = x.sample
        helper = "max_cols_flat"
        call = f"{helper}({x.array}, {x.at()}, {y.array}, {y.at()}, {h * w}, {c})"
    else:
        raise Unsupported("global_avg_pool2d with layout NHWC (run canonicalize-layout)")
    ctx.helper(helper)
    ctx.stage(Stage(op.kind, [call], batched=y.batched, work=float(x.size)))


EMITTERS_NN = {
    "conv2d": emit_conv2d,
    "dense": emit_dense,
    "max_pool2d": lambda ctx: _emit_window(ctx, "max_pool_planes"),
    "avg_pool2d": lambda ctx: _emit_window(ctx, "avg_pool_planes"),
    "global_avg_pool2d": emit_global_pool,
    "global_max_pool2d": emit_global_pool,
}
