"""Code generators of conv2d: the choice among its forms, and the GEMM forms on the micro-kernels.

conv2d (groups 1) takes one of three GEMM forms, picked by how many vector
lanes each would keep busy (``conv_form``):

* implicit GEMM (stride-1 rows at least half a vector wide): vectors run
  along output rows, read straight from a zero-padded copy of the input rows
  an item needs (``pad_rows``), through a table of filter-tap offsets;
* channel vectors (small or strided images, at least a vector of output
  channels): ``emit_conv_vectors.conv_channel``;
* im2col GEMM in strips: a work item unfolds a strip of output pixels into a
  thread-private panel (a 1x1 stride-1 conv reads its input as the panel) and
  runs an ``8 x 2L`` micro-kernel over it per block of 8 output channels.

Bias and relu are fused into every form's tile store. Depthwise filters and
other grouped filters go to ``emit_conv_vectors``; a transposed conv folded
with its zero-stuffing to ``emit_convt``.
"""

from __future__ import annotations

import logging
import math

from keydnn.backends.numba_cpu.codegen.emit_common import (
    act_args, conv_operands, conv_rows, kernel_activation, pack_conv_weights, panel_columns, post_activation,
    require_nchw,
    set_conflict,
)
from keydnn.backends.numba_cpu.codegen.emit_conv_vectors import CHANNEL_ROWS, conv_channel, conv_depthwise, conv_direct
from keydnn.backends.numba_cpu.codegen.emit_convt import emit_conv_transpose
from keydnn.backends.numba_cpu.codegen.program import CONV_GRAIN, Arr, EmitContext, Stage
from keydnn.backends.numba_cpu.codegen.ukernel_source import blocks_kernel_name

__all__ = ["emit_conv2d", "conv_form", "CONV_FORMS", "FORCE_CONV_FORM", "MIN_ITEMS"]

logger = logging.getLogger(__name__)

#: Work items a conv stage should offer per sample at least (so that both cores get work at batch 1).
MIN_ITEMS = 4
#: The conv2d GEMM forms, and a test's override of the choice (a form that does not apply is skipped).
CONV_FORMS = ("implicit", "channel", "im2col")
FORCE_CONV_FORM: "str | None" = None


def _lane_use(ow: int, o_ch: int, pixels: int, lanes: int, pointwise: bool) -> dict[str, float]:
    """The share of vector lanes doing useful work in each applicable form (the stride does not matter:
    implicit GEMM reads a strided conv's rows split into stride phases). im2col keeps every lane busy
    but, unless it reads its input as the panel (``pointwise``: then it also skips the padded copy the
    others make, so it wins ties), pays for packing the panel: about 90 multiply-adds' time per panel
    element measured, counted here as 32. By this count channel vectors beat a packed panel at any
    channel count (a 1-channel tile still does a multiply-add per load), so packing is a fallback only."""
    use = {}
    if 2 * ow > lanes:
        use["implicit"] = ow / lanes if ow <= lanes else ow / (-(-ow // (2 * lanes)) * 2 * lanes)
    vectors = -(-o_ch // lanes)
    full, rest = divmod(vectors, 4)
    tiles = [4] * full + ([rest] if rest else [])
    slots = sum(-(-pixels // CHANNEL_ROWS[nv]) * CHANNEL_ROWS[nv] * nv for nv in tiles)
    use["channel"] = o_ch * pixels / (slots * lanes)
    use["im2col"] = 1.01 if pointwise else o_ch / (o_ch + 32.0)
    return use


def conv_form(ow: int, o_ch: int, pixels: int, lanes: int, pointwise: bool = False) -> str:
    """The GEMM form of a groups-1 conv2d: the one keeping most lanes busy (ties go to the earlier of
    ``CONV_FORMS``), or ``FORCE_CONV_FORM`` where it applies."""
    use = _lane_use(ow, o_ch, pixels, lanes, pointwise)
    if FORCE_CONV_FORM in use:
        return FORCE_CONV_FORM
    return max(CONV_FORMS, key=lambda f: (use.get(f, -1.0), -CONV_FORMS.index(f)))


def _conv_gemm(ctx: EmitContext) -> None:
    """groups == 1: implicit GEMM on a zero-padded copy of the rows an item reads, channel-vector tiles, or
    GEMM on an im2col panel (``conv_form``)."""
    op = ctx.op
    x, y, w, b, (o_ch, cg, kh, kw), (c, h, wd), (oh, ow) = conv_operands(ctx)
    depth, pixels = cg * kh * kw, oh * ow
    lanes, mr = ctx.lanes, conv_rows()
    pointwise = (kh == kw == 1 and op.strides == (1, 1) and op.pads == (0, 0, 0, 0)
                 and (pixels % (2 * lanes) == 0 or x.array == "A"))
    form = conv_form(ow, o_ch, pixels, lanes, pointwise)
    if form == "channel":
        conv_channel(ctx)
        return
    w_off, blocks = pack_conv_weights(ctx, w, mr)
    b_off = ctx.weight(b) if b is not None else w_off
    bias_mode = 1 if b is not None else 0
    code, params, act = kernel_activation(op)
    sh, sw = op.strides
    dh, dw = op.dilations
    pt, _, pl, _ = op.pads
    mkb = blocks_kernel_name(mr, 2, lanes)  # every output-channel block of a tile position in one call
    xo, yo = x.at(), y.at()
    work = 2.0 * o_ch * depth * pixels
    tail = []
    if form == "implicit":
        # padded rows of sw phases (a strided conv's output columns are then contiguous in each phase)
        hp, wp = h + op.pads[0] + op.pads[1], wd + op.pads[2] + op.pads[3]
        wq = -(-wp // sw)
        pitch = sw * wq
        t_off = ctx.table([(ci * hp + ki * dh) * pitch + (kj * dw) % sw * wq + (kj * dw) // sw
                           for ci in range(cg) for ki in range(kh) for kj in range(kw)])
        scr = ctx.scratch(c * hp * pitch + 2 * sh * pitch)
        pair = ow <= lanes  # two output rows per tile, one vector each
        step = 2 if pair else 1
        groups = -(-oh // step)
        rows = (f"i_lo * {sh}", f"(i_hi - 1) * {sh} + {(kh - 1) * dh + 1}" + (f" + {sh}" if pair else ""))
        pad = (ctx.call("pad_rows", x, xo, c, h, wd, Arr("A"), scr, hp, wp, pt, pl, *rows) if sw == 1 else
               ctx.call("pad_rows_phased", x, xo, c, h, wd, Arr("A"), scr, hp, wq, sw, pt, pl, *rows))
        body = [f"i_lo = lo * {step}", f"i_hi = min({oh}, hi * {step})", pad, f"for i in range(i_lo, i_hi, {step}):"]
        if pair:
            body += [
                "    cols = " + (f"{ow} * min(2, {oh} - i)"),
                "    " + ctx.call(mkb, depth, Arr("W"), w_off, Arr("A"), f"{scr} + i * {sh * pitch}", Arr("T"), t_off,
                                  sh * pitch, y, f"{yo} + i * {ow}", pixels, ow, o_ch, "cols", Arr("W"), b_off,
                                  bias_mode, code, *params, blocks),
            ]
        else:
            body += [
                f"    for j0 in range(0, {ow}, {2 * lanes}):",
                "        " + ctx.call(mkb, depth, Arr("W"), w_off, Arr("A"), f"{scr} + i * {sh * pitch} + j0", Arr("T"),
                                      t_off, lanes, y, f"{yo} + i * {ow} + j0", pixels, lanes, o_ch, f"{ow} - j0",
                                      Arr("W"), b_off, bias_mode, code, *params, blocks),
            ]
        if post_activation(act):
            tail = [f"for o in range({o_ch}):",
                    "    " + ctx.call("act_copy", y, f"{yo} + o * {pixels} + i_lo * {ow}", y,
                                      f"{yo} + o * {pixels} + i_lo * {ow}", f"(i_hi - i_lo) * {ow}", *act_args(act))]
        ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} implicit-gemm {'row pairs' if pair else 'rows'}",
                        body + tail, batched=y.batched, split=groups,
                        max_blocks=max(1, min(groups, math.ceil(work / CONV_GRAIN))), work=work))
        return
    slab = 2 * lanes
    # a 1x1 conv reads its input planes in place, unless they share L1 sets: then each slab is copied out once
    # and serves every channel block
    pack_slabs = pointwise and set_conflict(pixels * ctx.dtype.itemsize, depth)
    if pointwise:
        strip = min(-(-pixels // slab) * slab, max(slab, 4096 // slab * slab))
        if -(-pixels // strip) < MIN_ITEMS:  # narrower strips before channel groups: no slab is read twice
            strip = max(slab, -(-pixels // (MIN_ITEMS * slab)) * slab)
        ldb = slab if pack_slabs else pixels
    else:
        strip = panel_columns(depth, pixels, slab, ctx.dtype.itemsize)
        ldb = strip
    t_off = ctx.table([k * ldb for k in range(depth)])
    strips = -(-pixels // strip)
    # few strips (a small image, batch 1): split each strip's output channels too, so that every thread
    # gets work; each thread packs a strip's panel once into its own scratch (packing can cost as much as
    # the GEMM of a small image, so never once per item)
    ocs = min(blocks, -(-MIN_ITEMS // strips)) if strips < MIN_ITEMS else 1
    per = -(-blocks // ocs)
    ocs = -(-blocks // per)
    body = ["for u in range(lo, hi):"]
    if ocs == 1:
        body += ["    s = u", "    ob_lo = 0", f"    ob_hi = {blocks}"]
    else:
        body += [f"    s = u // {ocs}", f"    ob_lo = (u - s * {ocs}) * {per}", f"    ob_hi = min({blocks}, ob_lo + {per})"]
    body += [f"    p0 = s * {strip}", f"    np_ = min({strip}, {pixels} - p0)"]
    if pack_slabs:
        scr = ctx.scratch(depth * slab)
        src, src_off = Arr("A"), scr
    elif pointwise:
        src, src_off = x, f"{xo} + p0 + j"
    else:
        scr = ctx.scratch(depth * strip)
        pack = ctx.call("im2col_panel", x, xo, c, h, wd, kh, kw, sh, sw, dh, dw, pt, pl, ow, "p0", "np_", Arr("A"), scr,
                        strip)
        if ocs > 1:  # pack a strip once per thread: the items of one strip that a thread claims share it
            body += [f"    if n * {strips} + s != packed:", "        " + pack, f"        packed = n * {strips} + s"]
        else:
            body += ["    " + pack]
        src, src_off = Arr("A"), f"{scr} + j"
    body.append(f"    for j in range(0, np_, {slab}):")
    if pack_slabs:
        body.append("        " + ctx.call("copy_rows", x, f"{xo} + p0 + j", pixels, Arr("A"), scr, slab, depth,
                                          f"min({slab}, np_ - j)"))
    body.append("        " + ctx.call(mkb, depth, Arr("W"), f"{w_off} + ob_lo * {depth * mr}", src, src_off, Arr("T"),
                                      t_off, lanes, y, f"{yo} + ob_lo * {mr * pixels} + p0 + j", pixels, lanes,
                                      f"{o_ch} - ob_lo * {mr}", "np_ - j", Arr("W"), f"{b_off} + ob_lo * {mr}",
                                      bias_mode, code, *params, "ob_hi - ob_lo"))
    if post_activation(act):
        body += [f"    for o in range(ob_lo * {mr}, min({o_ch}, ob_hi * {mr})):",
                 "        " + ctx.call("act_copy", y, f"{yo} + o * {pixels} + p0", y, f"{yo} + o * {pixels} + p0",
                                       "np_", *act_args(act))]
    split = strips * ocs
    ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} im2col-gemm strips={strips}x{strip}"
                    + (f" channel-groups={ocs}" if ocs > 1 else "") + (" packed-slabs" if pack_slabs else ""), body,
                    batched=y.batched,
                    setup=["packed = -1"] if ocs > 1 and not pointwise else [],
                    split=split, max_blocks=max(1, min(split, math.ceil(work / CONV_GRAIN))), work=work))


def emit_conv2d(ctx: EmitContext) -> None:
    require_nchw(ctx)
    if getattr(ctx, "unstuffed", None) is not None:  # a transposed conv with kernel == stride (emit_convt)
        emit_conv_transpose(ctx, ctx.unstuffed)
        return
    if ctx.op.groups == 1:
        _conv_gemm(ctx)
    elif ctx.constant(1).shape[1] == 1:
        conv_depthwise(ctx)
    else:
        conv_direct(ctx)
