"""Code generators of the 5-D volume ops (NCDHW), on the existing 2-D helpers and GEMM micro-kernels.

* ``conv3d``: im2col GEMM per output depth plane. A work item is a strip of
  one output depth plane's pixels: for every input channel ``c`` and depth tap
  ``kd`` the input plane ``od*sd + kd*dd - front`` is unfolded by the 2-D
  ``im2col_panel`` into the panel rows ``(c, kd, ki, kj)`` (rows of a plane
  outside the input are zeroed), and the packed ``mkpb`` micro-kernel
  multiplies the panel by the filters packed ``[block][tap][mr]`` per group,
  storing with the output channel stride OD*OH*OW (bias and relu fused, other
  activations after the store, as conv2d does).
* pools, ``upsample3d`` and ``pad3d`` run separably per channel: the 2-D
  helper over the channel's D planes of H x W into scratch, then over D with a
  plane's pixels as one row (max, average with padding uncounted, nearest
  repeat and zero-stuffing all factor per axis); ``crop3d`` is one strided
  copy (the kept depth planes are consecutive).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from keydnn.backends.numba_cpu.codegen.emit_common import act_args, conv_rows, kernel_activation, panel_columns, post_activation
from keydnn.backends.numba_cpu.codegen.program import CONV_GRAIN, GRAIN, Arr, EmitContext, LayoutUnsupported, Stage
from keydnn.backends.numba_cpu.codegen.ukernel_source import blocks_kernel_name

__all__ = ["EMITTERS_3D"]

logger = logging.getLogger(__name__)


def _require_ncdhw(ctx: EmitContext) -> None:
    if ctx.op.layout != "NCDHW":
        raise LayoutUnsupported(f"{ctx.op.kind} with layout {ctx.op.layout} (kernels are NCDHW; run canonicalize-layout)")


def _per_channel(ctx: EmitContext, description: str, body: list[str], work: float) -> None:
    c = ctx.ins[0].sample[0]
    ctx.stage(Stage(description, ["for ch in range(lo, hi):"] + ["    " + line for line in body],
                    batched=ctx.out.batched, split=c, max_blocks=max(1, min(c, math.ceil(work / GRAIN))), work=work))


def emit_conv3d(ctx: EmitContext) -> None:
    _require_ncdhw(ctx)
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    w = np.asarray(ctx.constant(1), dtype=np.float64)
    b = ctx.constant(2)
    o_ch, cg, kd, kh, kw = w.shape
    c, d, h, wd = x.sample
    _, od, oh, ow = y.sample
    groups = op.groups
    og = o_ch // groups
    taps2, depth, plane = kh * kw, cg * kd * kh * kw, oh * ow
    vol = od * plane
    lanes, mr = ctx.lanes, conv_rows()
    blocks = -(-og // mr)
    packed = np.zeros((groups, blocks * mr, depth))
    packed[:, :og] = w.reshape(groups, og, depth)
    w_off = ctx.weight(packed.reshape(groups, blocks, mr, depth).transpose(0, 1, 3, 2))
    b_off = ctx.weight(b) if b is not None else w_off
    bias_mode = 1 if b is not None else 0
    code, params, act = kernel_activation(op)
    sd, sh, sw = op.strides
    dd, dh, dw = op.dilations
    front, top, left = op.pads[0], op.pads[2], op.pads[4]
    slab = 2 * lanes
    strip = panel_columns(depth, plane, slab, ctx.dtype.itemsize)
    per_plane = -(-plane // strip)
    t_off = ctx.table([k * strip for k in range(depth)])
    scr = ctx.scratch(depth * strip)
    xo, yo = x.at(), y.at()
    mkb = blocks_kernel_name(mr, 2, lanes)
    body = [
        "for u in range(lo, hi):",
        f"    od = u // {per_plane}",
        f"    p0 = (u - od * {per_plane}) * {strip}",
        f"    np_ = min({strip}, {plane} - p0)",
        f"    for g in range({groups}):",
        f"        for ci in range({cg}):",
        f"            for k in range({kd}):",
        f"                iz = od * {sd} + k * {dd} - {front}",
        f"                row = {scr} + (ci * {kd} + k) * {taps2 * strip}",
        f"                if iz < 0 or iz >= {d}:",
        "                    " + ctx.call("pad_flat", Arr("A"), "row", Arr("A"), "row", 1, 0, 0, 1, taps2 * strip, 0, 0,
                                          0.0),
        "                else:",
        "                    " + ctx.call("im2col_panel", x, f"{xo} + ((g * {cg} + ci) * {d} + iz) * {h * wd}", 1, h, wd,
                                          kh, kw, sh, sw, dh, dw, top, left, ow, "p0", "np_", Arr("A"), "row", strip),
        f"        for j in range(0, np_, {slab}):",
        "            " + ctx.call(mkb, depth, Arr("W"), f"{w_off} + g * {blocks * mr * depth}", Arr("A"), f"{scr} + j",
                                  Arr("T"), t_off, lanes, y, f"{yo} + g * {og * vol} + od * {plane} + p0 + j", vol, lanes,
                                  og, "np_ - j", Arr("W"), f"{b_off} + g * {og}", bias_mode, code, *params, blocks),
    ]
    if post_activation(act):
        body += [f"    for o in range({o_ch}):",
                 "        " + ctx.call("act_copy", y, f"{yo} + o * {vol} + od * {plane} + p0", y,
                                       f"{yo} + o * {vol} + od * {plane} + p0", "np_", *act_args(act))]
    work = 2.0 * o_ch * depth * vol
    split = od * per_plane
    ctx.stage(Stage(f"conv3d {o_ch}x{cg}x{kd}x{kh}x{kw} groups={groups} im2col-gemm per depth plane "
                    f"strips={per_plane}x{strip}", body, batched=y.batched, split=split,
                    max_blocks=max(1, min(split, math.ceil(work / CONV_GRAIN))), work=work))


def _emit_pool3d(ctx: EmitContext, helper: str) -> None:
    _require_ncdhw(ctx)
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    _, d, h, w = x.sample
    _, od, oh, ow = y.sample
    kd, kh, kw = op.kernel
    sd, sh, sw = op.strides
    front, top, left = op.pads[0], op.pads[2], op.pads[4]
    scr = ctx.scratch(d * oh * ow)
    body = [ctx.call(helper, x, f"{x.at()} + ch * {d * h * w}", Arr("A"), scr, d, h, w, oh, ow, kh, kw, sh, sw, top,
                     left),
            ctx.call(helper, Arr("A"), scr, y, f"{y.at()} + ch * {od * oh * ow}", 1, d, oh * ow, od, oh * ow, kd, 1, sd,
                     1, front, 0)]
    _per_channel(ctx, f"{op.kind} {kd}x{kh}x{kw}/{sd}x{sh}x{sw} planes then depth", body,
                 float(x.sample[0] * (d * oh * ow * kh * kw + od * oh * ow * kd)))


def emit_upsample3d(ctx: EmitContext) -> None:
    _require_ncdhw(ctx)
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    _, d, h, w = x.sample
    _, od, oh, ow = y.sample
    fd, fh, fw = op.factors
    scr = ctx.scratch(d * oh * ow)
    body = [ctx.call("upsample_flat", x, f"{x.at()} + ch * {d * h * w}", Arr("A"), scr, d, h, w, 1, fh, fw),
            ctx.call("upsample_flat", Arr("A"), scr, y, f"{y.at()} + ch * {od * oh * ow}", 1, d, 1, oh * ow, fd, 1)]
    _per_channel(ctx, f"upsample3d {fd}x{fh}x{fw}", body, float(y.size + x.sample[0] * d * oh * ow))


def emit_pad3d(ctx: EmitContext) -> None:
    _require_ncdhw(ctx)
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    _, d, h, w = x.sample
    _, od, oh, ow = y.sample
    (fd, fh, fw), p = op.factors, op.pads
    scr = ctx.scratch(d * oh * ow)
    body = [ctx.call("dilate_flat", x, f"{x.at()} + ch * {d * h * w}", Arr("A"), scr, d, h, w, 1, oh, ow, fh, fw, p[2],
                     p[4]),
            ctx.call("dilate_flat", Arr("A"), scr, y, f"{y.at()} + ch * {od * oh * ow}", 1, d, 1, oh * ow, od, 1, fd, 1,
                     p[0], 0)]
    _per_channel(ctx, f"pad3d {list(op.factors)} {list(op.pads)}", body, float(y.size + x.sample[0] * d * oh * ow))


def emit_crop3d(ctx: EmitContext) -> None:
    _require_ncdhw(ctx)
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    _, d, h, w = x.sample
    _, od, oh, ow = y.sample
    cr = op.crops
    body = [ctx.call("crop_flat", x, f"{x.at()} + (ch * {d} + {cr[0]}) * {h * w}", y, f"{y.at()} + ch * {od * oh * ow}",
                     od, h, w, oh, ow, cr[2], cr[4])]
    _per_channel(ctx, f"crop3d {list(cr)}", body, float(y.size))


EMITTERS_3D = {
    "conv3d": emit_conv3d,
    "max_pool3d": lambda ctx: _emit_pool3d(ctx, "max_pool_planes"),
    "avg_pool3d": lambda ctx: _emit_pool3d(ctx, "avg_pool_planes"),
    "upsample3d": emit_upsample3d,
    "pad3d": emit_pad3d,
    "crop3d": emit_crop3d,
}
