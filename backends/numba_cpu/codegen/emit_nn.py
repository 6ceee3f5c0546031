"""Code generators for the compute ops: conv2d and dense on the GEMM micro-kernels, and pooling.

conv2d (groups 1) takes one of three GEMM forms, picked by how many vector
lanes each would keep busy (``conv_form``):

* implicit GEMM (stride-1 rows at least half a vector wide): vectors run
  along output rows, read straight from a zero-padded copy of the input rows
  an item needs (``pad_rows``), through a table of filter-tap offsets;
* channel vectors (small or strided images, at least a vector of output
  channels): vectors run along output channels, rows of the tile are output
  pixels read as broadcasts from the zero-padded input through a table of
  pixel offsets, and the tile is stored transposed (``mkc_*`` kernels). Nothing
  is packed, so an 8x8 image or a stride-2 conv runs at GEMM speed instead of
  paying an im2col panel that costs as much as its GEMM;
* im2col GEMM in strips: a work item unfolds a strip of output pixels into a
  thread-private panel (a 1x1 stride-1 conv reads its input as the panel) and
  runs an ``8 x 2L`` micro-kernel over it per block of 8 output channels.

Bias and relu are fused into every form's tile store. Depthwise filters (one
input channel each) run in vectors along output rows (``cg_depthwise``); other
grouped filters take direct loops.

dense packs its weight into panels of ``2L`` columns (``mkn_*`` kernels); rows
(samples) go through the 8-row kernel in depth blocks that fit L1, then 4-row,
then single-row ones (a GEMV at batch 1), one item per (row block, pair of
panels).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from keydnn.backends.numba_cpu.codegen.program import GRAIN, Arr, EmitContext, LayoutUnsupported, Stage
from keydnn.backends.numba_cpu.codegen.codes import LINEAR, RELU, RELU0, encode_activation
from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.codegen.dense_kernel_source import dense_kernel_name
from keydnn.backends.numba_cpu.codegen.target import current_target
from keydnn.backends.numba_cpu.codegen.ukernel_source import (
    DEPTHWISE_SHAPES, DW_ROWS, blocks_kernel_name, channel_kernel_name, depthwise_kernel_name,
)

__all__ = ["EMITTERS_NN", "kernel_activation", "post_activation", "panel_columns", "conv_form", "FORCE_CONV_FORM",
           "CONV_FORMS", "set_conflict"]

logger = logging.getLogger(__name__)

#: Bytes a conv strip's panel may take (it should stay in L2).
PANEL_BYTES = 1 << 18
#: Rows of a dense work item.
DENSE_ROWS = 32
#: Rows of the largest dense tile on 32-register targets (24 accumulators).
DENSE_BIG_TILE = 12
#: Work items a conv stage should offer per sample at least (so that both cores get work at batch 1).
MIN_ITEMS = 4
#: Outputs per vector of the depthwise kernels: the target's float32 vector (``cpu.DW_LANES``; 16 on AVX-512,
#: 8 on AVX2, 4 on the generic tier).
DW_LANES = dw_lanes()
#: The conv2d GEMM forms, and a test's override of the choice (a form that does not apply is skipped).
CONV_FORMS = ("implicit", "channel", "im2col")
FORCE_CONV_FORM: "str | None" = None
#: L1 data cache geometry the tiling assumes (bytes per way, ways): lines whose addresses differ by a multiple
#: of the way size share a set. Zen 4/5 and recent Intel cores have 4 KiB ways and 8-12 of them.
L1_WAY_BYTES, L1_WAYS = 4096, 12
#: Bytes of a channel-vector tile's staging block (the tile stores land there, then whole lines go out).
STAGING_BYTES = 24 << 10
#: Vectors of output channels -> pixel rows of the channel-vector tile.
_CHANNEL_ROWS = {nv: current_target().channel_rows(nv) for nv in (1, 2, 3, 4)}


def kernel_activation(op) -> tuple[int, tuple, tuple]:
    """(micro-kernel act code, its params text, the full epilogue) for a fused activation."""
    act = encode_activation(getattr(op, "activation", None))
    code = act[0]
    if code == RELU0:
        return 1, (0.0, 0.0, 0.0, 0.0), act
    if code == RELU:
        return 2, tuple(float(p) for p in act[1:]), act
    return 0, (0.0, 0.0, 0.0, 0.0), act


def post_activation(act: tuple) -> bool:
    """Whether the epilogue must run after the micro-kernel's store (anything but relu / linear)."""
    return act[0] not in (LINEAR, RELU0, RELU)


def _require_nchw(ctx: EmitContext) -> None:
    layout = getattr(ctx.op, "layout", "NCHW")
    if layout != "NCHW":
        raise LayoutUnsupported(f"{ctx.op.kind} with layout {layout} (kernels are NCHW; run canonicalize-layout)")


def panel_columns(depth: int, pixels: int, slab: int, itemsize: int) -> int:
    """Strip width: whole slabs, as many as keep the panel within PANEL_BYTES, at most the image."""
    fit = max(slab, (PANEL_BYTES // (itemsize * max(depth, 1))) // slab * slab)
    return min(fit, -(-pixels // slab) * slab)


def set_conflict(pitch_bytes: int, rows: int) -> bool:
    """Whether one line from each of ``rows`` rows ``pitch_bytes`` apart overloads its L1 set (more than half
    the ways per set). A channels-first tensor's planes are such rows: a 32x32 float32 plane is exactly one
    way, so a tile touching 32 planes evicted itself, and a 1x1 conv reading its input in place ran at 74% and
    a channel-vector conv storing into such planes at 30% of the speed with the planes 64 bytes further apart
    (measured)."""
    sets = min(L1_WAY_BYTES // 64, L1_WAY_BYTES // math.gcd(pitch_bytes, L1_WAY_BYTES))
    return rows > sets * (L1_WAYS // 2)


def _act_args(act: tuple) -> tuple:
    return (act[0],) + tuple(float(a) for a in act[1:])


def _pack_conv_weights(ctx: EmitContext, w: np.ndarray, mr: int) -> tuple[int, int]:
    """Weights as [block of mr output channels][tap k][mr] (zero rows past the last channel)."""
    o_ch = w.shape[0]
    depth = w[0].size
    blocks = -(-o_ch // mr)
    # packed in the graph's dtype (``ctx.weight`` stores that anyway): a float64 staging copy doubled the
    # memory a large model's warm start peaked at (ResNet50: 200 MB of it)
    packed = np.zeros((blocks * mr, depth), dtype=ctx.dtype)
    packed[:o_ch] = np.asarray(w).reshape(o_ch, depth)
    return ctx.weight(packed.reshape(blocks, mr, depth).transpose(0, 2, 1)), blocks


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
    slots = sum(-(-pixels // _CHANNEL_ROWS[nv]) * _CHANNEL_ROWS[nv] * nv for nv in tiles)
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


def _conv_channel(ctx: EmitContext) -> None:
    """groups == 1 with vectors along output channels: ``mkc`` tiles of output pixels x channel vectors over a
    zero-padded copy of the input rows an item reads (or the input itself when there is no padding)."""
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    w = ctx.constant(1)
    b = ctx.constant(2)
    o_ch, cg, kh, kw = w.shape
    c, h, wd = x.sample
    _, oh, ow = y.sample
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
        mr = _CHANNEL_ROWS[nv]
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
                                   "p_hi - p_lo", *_act_args(act))]
    work = 2.0 * o_ch * depth * pixels
    ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} channel-vectors blocks={'+'.join(map(str, widths))}"
                    + (f" staged={chunk}" if staged else ""), body,
                    batched=y.batched, split=units, max_blocks=max(1, min(units, math.ceil(work / (8 * GRAIN)))),
                    work=work))


def _conv_gemm(ctx: EmitContext) -> None:
    """groups == 1: implicit GEMM on a zero-padded copy of the rows an item reads, channel-vector tiles, or
    GEMM on an im2col panel (``conv_form``)."""
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    w = ctx.constant(1)
    b = ctx.constant(2)
    o_ch, cg, kh, kw = w.shape
    c, h, wd = x.sample
    _, oh, ow = y.sample
    depth, pixels = cg * kh * kw, oh * ow
    lanes, mr = ctx.lanes, _conv_rows()
    pointwise = (kh == kw == 1 and op.strides == (1, 1) and op.pads == (0, 0, 0, 0)
                 and (pixels % (2 * lanes) == 0 or x.array == "A"))
    form = conv_form(ow, o_ch, pixels, lanes, pointwise)
    if form == "channel":
        _conv_channel(ctx)
        return
    w_off, blocks = _pack_conv_weights(ctx, w, mr)
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
                                      f"{yo} + o * {pixels} + i_lo * {ow}", f"(i_hi - i_lo) * {ow}", *_act_args(act))]
        ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} implicit-gemm {'row pairs' if pair else 'rows'}",
                        body + tail, batched=y.batched, split=groups,
                        max_blocks=max(1, min(groups, math.ceil(work / (8 * GRAIN)))), work=work))
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
                                       "np_", *_act_args(act))]
    split = strips * ocs
    ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} im2col-gemm strips={strips}x{strip}"
                    + (f" channel-groups={ocs}" if ocs > 1 else "") + (" packed-slabs" if pack_slabs else ""), body,
                    batched=y.batched,
                    setup=["packed = -1"] if ocs > 1 and not pointwise else [],
                    split=split, max_blocks=max(1, min(split, math.ceil(work / (8 * GRAIN)))), work=work))


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
    xo, yo = x.at(), y.at()
    body = [ctx.call("conv_direct_planes", x, xo, c, h, wd, Arr("W"), w_off, b_off, int(b is not None), y, yo, oh, ow,
                     "lo", "hi", cg, og, kh, kw, sh, sw, dh, dw, pt, pl)]
    if act[0] != LINEAR:
        body.append(ctx.call("act_copy", y, f"{yo} + lo * {oh * ow}", y, f"{yo} + lo * {oh * ow}",
                             f"(hi - lo) * {oh * ow}", *_act_args(act)))
    work = 2.0 * o_ch * cg * kh * kw * oh * ow
    ctx.stage(Stage(f"conv2d {o_ch}x{cg}x{kh}x{kw} groups={op.groups} direct", body, batched=y.batched,
                    split=o_ch, max_blocks=max(1, min(o_ch, math.ceil(work / (4 * GRAIN)))), work=work))


def _conv_depthwise(ctx: EmitContext) -> None:
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
                             f"(hi - lo) * {oh * ow}", *_act_args(act)))
    work = 2.0 * o_ch * kh * kw * oh * ow
    ctx.stage(Stage(f"conv2d {o_ch}x1x{kh}x{kw} depthwise{' unrolled' if unrolled else ''}", body,
                    batched=y.batched, split=o_ch, max_blocks=max(1, min(o_ch, math.ceil(work / GRAIN))), work=work))


def emit_conv2d(ctx: EmitContext) -> None:
    _require_nchw(ctx)
    if getattr(ctx, "unstuffed", None) is not None:  # a transposed conv with kernel == stride (emit_convt)
        from keydnn.backends.numba_cpu.codegen.emit_convt import emit_conv_transpose

        emit_conv_transpose(ctx, ctx.unstuffed)
        return
    if ctx.op.groups == 1:
        _conv_gemm(ctx)
    elif ctx.constant(1).shape[1] == 1:
        _conv_depthwise(ctx)
    else:
        _conv_direct(ctx)


def _conv_rows() -> int:
    """Output channels per conv GEMM tile: as many as the target's vector registers hold two vectors of
    (8 with 32 registers, 6 with 16: 8 x 2 accumulators would spill on AVX2)."""
    return current_target().gemm_rows


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
    tile = _conv_rows()  # two-vector tile rows: as many as the registers hold (8 on AVX-512, 6 on AVX2)
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
                                   *_act_args(act))]
    work = 2.0 * k * m * per_sample_rows
    ctx.stage(Stage(f"dense {k}->{m} panels={2 * groups}x{half}" + (f" depth-blocks={kc}" if kc < k else ""), body,
                    batched=y.batched, setup=[f"rows = {rows}"],
                    items=f"((rows + {dense_rows - 1}) // {dense_rows}) * {groups}", work=work))


def _emit_window(ctx: EmitContext, helper: str) -> None:
    _require_nchw(ctx)
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
