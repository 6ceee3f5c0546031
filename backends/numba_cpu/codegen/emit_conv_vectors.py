"""Code generators of the conv2d forms that keep vectors along something other than output rows of a GEMM:
channel-vector tiles (groups 1), depthwise filters, and direct loops for other grouped filters.

* channel vectors (small or strided images, at least a vector of output
  channels): vectors run along output channels, rows of the tile are output
  pixels read as broadcasts from the zero-padded input through a table of
  pixel offsets, and the tile is stored transposed (``mkc_*`` kernels). Nothing
  is packed, so an 8x8 image or a stride-2 conv runs at GEMM speed instead of
  paying an im2col panel that costs as much as its GEMM; ``emit_conv.conv_form``
  picks this form by lane use;
* depthwise filters (one input channel each) run in vectors along output rows
  (``cg_depthwise``); other grouped filters take direct loops.

Split from ``emit_conv`` (which chooses among the forms and emits the GEMM ones) to keep each module small.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from keydnn.backends.numba_cpu.codegen.codes import LINEAR, encode_activation
from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.codegen.emit_common import (
    act_args, conv_operands, kernel_activation, post_activation, set_conflict,
)
from keydnn.backends.numba_cpu.codegen.program import CONV_GRAIN, GRAIN, Arr, EmitContext, Stage
from keydnn.backends.numba_cpu.codegen.target import current_target
from keydnn.backends.numba_cpu.codegen.ukernel_source import (
    DEPTHWISE_SHAPES, DW_ROWS, channel_kernel_name, depthwise_kernel_name,
)

__all__ = ["conv_channel", "conv_direct", "conv_depthwise", "CHANNEL_ROWS", "DW_LANES", "STAGING_BYTES"]

logger = logging.getLogger(__name__)

#: Outputs per vector of the depthwise kernels: the target's float32 vector (``cpu.DW_LANES``; 16 on AVX-512,
#: 8 on AVX2, 4 on the generic tier).
DW_LANES = dw_lanes()
#: Bytes of a channel-vector tile's staging block (the tile stores land there, then whole lines go out).
STAGING_BYTES = 24 << 10
#: Vectors of output channels -> pixel rows of the channel-vector tile.
CHANNEL_ROWS = {nv: current_target().channel_rows(nv) for nv in (1, 2, 3, 4)}


def conv_channel(ctx: EmitContext) -> None:
    """groups == 1 with vectors along output channels: ``mkc`` tiles of output pixels x channel vectors over a
    zero-padded copy of the input rows an item reads (or the input itself when there is no padding)."""
    op = ctx.op
    x, y, w, b, (o_ch, cg, kh, kw), (c, h, wd), (oh, ow) = conv_operands(ctx)
    depth, pixels, lanes = cg * kh * kw, oh * ow, ctx.lanes
    sh, sw = op.strides
    dh, dw = op.dilations
    pt, pb, pl, pr = op.pads
    code, params, act = kernel_activation(op)
    xo, yo = x.at(), y.at()
    # channel blocks: 4 vectors each, the rest in one narrower block; filters packed [block][tap][channel]
    vectors = -(-o_ch // lanes)
    widths = [4] * (vectors // 4) + ([vectors % 4] if vectors % 4 else [])
    taps = np.asarray(w).reshape(o_ch, depth).T  # [tap][channel]
    blocks, start = [], 0
    for nv in widths:
        panel = np.zeros((depth, nv * lanes), dtype=ctx.dtype)
        width = min(nv * lanes, o_ch - start)
        panel[:, :width] = taps[:, start:start + width]
        blocks.append((nv, start, ctx.weight(panel)))
        start += nv * lanes
    if b is not None:
        bias = np.zeros(vectors * lanes)
        bias[:o_ch] = b
        b_off, bias_mode = ctx.weight(bias), 2
    else:
        b_off, bias_mode = blocks[0][2], 0
    padded = any(op.pads)
    hp, wp = (h + pt + pb, wd + pl + pr) if padded else (h, wd)
    t_off = ctx.table([(ci * hp + ki * dh) * wp + kj * dw for ci in range(cg) for ki in range(kh) for kj in range(kw)])
    p_off = ctx.table([(p // ow) * sh * wp + (p % ow) * sw for p in range(pixels)])
    # items: runs of whole cache lines of every output plane (the tile stores go across the channel planes,
    # so items of a few pixels would have both threads writing the same lines of every plane)
    itemsize = ctx.dtype.itemsize
    unit = max(1, 64 // itemsize)
    units = -(-pixels // unit)
    # planes sharing L1 sets: tiles go to a compact staging block first, which leaves in whole lines per plane
    staged = set_conflict(pixels * itemsize, o_ch)
    chunk = max(unit, STAGING_BYTES // (o_ch * itemsize) // unit * unit)
    pitch = chunk + unit  # a staging row is not a multiple of the way size either
    pad_size = c * hp * wp if padded else 0
    scr = ctx.scratch(pad_size + (o_ch * pitch if staged else 0))
    body = [f"p_lo = lo * {unit}", f"p_hi = min({pixels}, hi * {unit})"]
    if padded:
        src, src_off = Arr("A"), scr
        body.append(ctx.call("pad_rows", x, xo, c, h, wd, Arr("A"), scr, hp, wp, pt, pl, f"(p_lo // {ow}) * {sh}",
                             f"((p_hi - 1) // {ow}) * {sh} + {(kh - 1) * dh + 1}"))
    else:
        src, src_off = x, xo
    if staged:
        body += [f"for q in range(p_lo, p_hi, {chunk}):", f"    q_hi = min(p_hi, q + {chunk})"]
        ind, lo_, hi_, out, out_at, out_cs = "    ", "q", "q_hi", Arr("A"), f"{scr} + {pad_size} - q", pitch
    else:
        ind, lo_, hi_, out, out_at, out_cs = "", "p_lo", "p_hi", y, yo, pixels
    for nv, first, w_off in blocks:
        mr = CHANNEL_ROWS[nv]
        body += [
            f"{ind}for p in range({lo_}, {hi_}, {mr}):",
            f"{ind}    " + ctx.call(channel_kernel_name(mr, nv, lanes), depth, src, src_off, Arr("T"), f"{p_off} + p",
                                    Arr("T"), t_off, Arr("W"), w_off, out, f"{out_at} + {first * out_cs} + p", out_cs,
                                    f"min({mr}, {hi_} - p)", min(nv * lanes, o_ch - first), Arr("W"),
                                    f"{b_off} + {first}", bias_mode, code, *params),
        ]
    if staged:
        body.append(f"{ind}" + ctx.call("copy_rows", Arr("A"), f"{scr} + {pad_size}", pitch, y, f"{yo} + q", pixels,
                                        o_ch, "q_hi - q"))
    if post_activation(act):
        body += [f"for o in range({o_ch}):",
                 "    " + ctx.call("act_copy", y, f"{yo} + o * {pixels} + p_lo", y, f"{yo} + o * {pixels} + p_lo",
                                   "p_hi - p_lo", *act_args(act))]
    work = 2.0 * o_ch * depth * pixels
    ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} channel-vectors blocks={'+'.join(map(str, widths))}"
                    + (f" staged={chunk}" if staged else ""), body,
                    batched=y.batched, split=units, max_blocks=max(1, min(units, math.ceil(work / CONV_GRAIN))),
                    work=work))


def conv_direct(ctx: EmitContext) -> None:
    op = ctx.op
    x, y, w, b, (o_ch, cg, kh, kw), (c, h, wd), (oh, ow) = conv_operands(ctx)
    og = o_ch // op.groups
    w_off = ctx.weight(w)
    b_off = ctx.weight(b) if b is not None else w_off
    sh, sw = op.strides
    dh, dw = op.dilations
    pt, _, pl, _ = op.pads
    act = encode_activation(op.activation)
    xo, yo = x.at(), y.at()
    body = [ctx.call("conv_direct_planes", x, xo, c, h, wd, Arr("W"), w_off, b_off, int(b is not None), y, yo, oh, ow,
                     "lo", "hi", cg, og, kh, kw, sh, sw, dh, dw, pt, pl)]
    if act[0] != LINEAR:
        body.append(ctx.call("act_copy", y, f"{yo} + lo * {oh * ow}", y, f"{yo} + lo * {oh * ow}",
                             f"(hi - lo) * {oh * ow}", *act_args(act)))
    work = 2.0 * o_ch * cg * kh * kw * oh * ow
    ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} groups={op.groups} direct", body, batched=y.batched,
                    split=o_ch, max_blocks=max(1, min(o_ch, math.ceil(work / (4 * GRAIN)))), work=work))


def conv_depthwise(ctx: EmitContext) -> None:
    """One input channel per filter (any depth multiplier): vectors along output rows over a phase-split
    zero-padded copy of each input plane; the common filter shapes run a kernel with their taps unrolled
    (``dwk_*``: the MobileNet-style model's 3x3 depthwise stages in a third of the time), the others
    ``dw_conv_planes``."""
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    w = ctx.constant(1)
    b = ctx.constant(2)
    o_ch, _, kh, kw = w.shape
    c, h, wd = x.sample
    _, oh, ow = y.sample
    sh, sw = op.strides
    dh, dw = op.dilations
    pt, pb, pl, pr = op.pads
    hp = h + pt + pb
    wq = -(-(wd + pl + pr) // sw)
    w_off = ctx.weight(w)
    b_off = ctx.weight(b) if b is not None else w_off
    code, params, act = kernel_activation(op)
    xo, yo = x.at(), y.at()
    unrolled = (kh, kw, sw) in DEPTHWISE_SHAPES and (dh, dw) == (1, 1) and sh == sw
    if unrolled:  # taps unrolled, filter shape in the code; its last tile reads (DW_ROWS - 1) * sh rows more
        scr = ctx.scratch((hp + (DW_ROWS - 1) * sh) * sw * wq + DW_LANES)
        body = [ctx.call(depthwise_kernel_name(kh, kw, sw, DW_LANES), x, xo, h, wd, Arr("W"), w_off, b_off, int(b is not None),
                         y, yo, oh, ow, "lo", "hi", o_ch // c, Arr("A"), scr, hp, wq, pt, pl, code, *params)]
    else:
        scr = ctx.scratch(hp * sw * wq + DW_LANES)
        body = [ctx.call("dw_conv_planes", x, xo, h, wd, Arr("W"), w_off, b_off, int(b is not None), y, yo, oh, ow,
                         "lo", "hi", o_ch // c, kh, kw, sh, sw, dh, dw, pt, pl, Arr("A"), scr, hp, wq, code, *params)]
    if post_activation(act):
        body.append(ctx.call("act_copy", y, f"{yo} + lo * {oh * ow}", y, f"{yo} + lo * {oh * ow}",
                             f"(hi - lo) * {oh * ow}", *act_args(act)))
    work = 2.0 * o_ch * kh * kw * oh * ow
    ctx.stage(Stage(f"conv2d {o_ch}x1x{kh}x{kw} depthwise{' unrolled' if unrolled else ''}", body,
                    batched=y.batched, split=o_ch, max_blocks=max(1, min(o_ch, math.ceil(work / GRAIN))), work=work))
