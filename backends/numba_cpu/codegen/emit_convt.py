"""Transposed convolutions whose kernel equals their stride, without the zero-stuffed input.

The Keras converter lowers ``Conv2DTranspose`` to ``dilate_pad2d`` (zeros
between the input pixels) and a stride-1 ``conv2d``; with kernel == stride
three of every four multiply-adds of a 2x2 / stride-2 layer then multiply a
stuffed zero, and the stuffed copy is four times the input (a U-Net's two
up-convolutions were 37% of its batch-1 time). Here the pair runs as one
stage: a 1x1 GEMM over the undilated input planes with one output row per
(output channel, tap) — each output pixel gets exactly one tap per axis, so
bias and relu apply in the GEMM's store — then ``scatter_phases`` puts the
rows in place. ``dilate_folds`` picks the pairs; the code generator treats the
``dilate_pad2d`` as a view of its input and hands the conv its operand.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from keydnn.backends.numba_cpu.codegen.emit_common import (
    act_args, conv_rows, kernel_activation, pack_conv_weights, post_activation,
)
from keydnn.backends.numba_cpu.codegen.program import CONV_GRAIN, Arr, EmitContext, Stage, aligned
from keydnn.backends.numba_cpu.codegen.ukernel_source import blocks_kernel_name

__all__ = ["dilate_folds", "emit_conv_transpose", "CHUNK_BYTES"]

logger = logging.getLogger(__name__)

#: Bytes of a chunk's GEMM result in thread scratch (whole input rows; it should stay in L2).
CHUNK_BYTES = 1 << 16


def _foldable(d, c) -> bool:
    """Whether dilate node ``d`` feeding conv node ``c`` can run as one stage (shapes aside): NCHW, a stride-1
    undilated unpadded groups-1 conv, a real stuffing factor."""
    dop, cop = d.op, c.op
    if dop.layout != "NCHW" or getattr(cop, "layout", "NCHW") != "NCHW" or cop.groups != 1:
        return False
    if tuple(cop.strides) != (1, 1) or tuple(cop.dilations) != (1, 1) or any(cop.pads):
        return False
    return tuple(dop.factors) != (1, 1)


def dilate_folds(graph, consts: dict) -> dict[str, object]:
    """``dilate_pad2d`` node name -> the ``conv2d`` node that runs it (its only use, not a graph output), for
    every transposed conv with kernel == stride and the border Keras gives it (``kernel - 1`` each side)."""
    uses = {name: len(users) for name, users in graph.users().items()}
    producers = graph.producers()
    folds = {}
    for node in graph.nodes:
        if node.op.kind != "conv2d" or len(node.inputs) < 2:
            continue
        d = producers.get(node.inputs[0])
        if d is None or d.op.kind != "dilate_pad2d" or uses.get(node.inputs[0]) != 1 or node.inputs[0] in graph.outputs:
            continue
        if d.inputs[0] in graph.outputs or any(v.name == d.inputs[0] for v in graph.inputs):
            continue  # the GEMM's last vector loads may run past the operand's end: arena storage (with slack) only
        w = consts.get(node.inputs[1])
        if w is None or w.ndim != 4 or not _foldable(d, node):
            continue
        kh, kw = w.shape[2:]
        if (kh, kw) == tuple(d.op.factors) and tuple(d.op.pads) == (kh - 1, kh - 1, kw - 1, kw - 1):
            folds[d.name] = node
    return folds


def emit_conv_transpose(ctx: EmitContext, x) -> None:
    """The conv of a folded pair; ``x`` is the undilated input (``ctx.ins[0]`` is the stuffed value)."""
    op, y = ctx.op, ctx.out
    w = np.asarray(ctx.constant(1))
    b = ctx.constant(2)
    o_ch, c, kh, kw = w.shape
    _, h, wd = x.sample
    _, oh, ow = y.sample
    lanes, mr = ctx.lanes, conv_rows()
    rows = o_ch * kh * kw
    w_off, blocks = pack_conv_weights(ctx, w.transpose(0, 2, 3, 1).reshape(rows, c), mr)
    if b is not None:
        b_off, bias_mode = ctx.weight(np.repeat(np.asarray(b, dtype=np.float64), kh * kw)), 1
    else:
        b_off, bias_mode = w_off, 0
    code, params, act = kernel_activation(op)
    pixels = h * wd
    t_off = ctx.table([k * pixels for k in range(c)])
    per = max(1, min(h, CHUNK_BYTES // (ctx.dtype.itemsize * rows * wd)))  # input rows per chunk
    pitch = aligned(-(-per * wd // (2 * lanes)) * 2 * lanes)
    scr = ctx.scratch(rows * pitch)
    xo, yo = x.at(), y.at()
    mkb = blocks_kernel_name(mr, 2, lanes)
    body = [
        f"for a0 in range(lo, hi, {per}):",
        "    a1 = min(hi, a0 + " + str(per) + ")",
        f"    np_ = (a1 - a0) * {wd}",
        f"    for j in range(0, np_, {2 * lanes}):",
        "        " + ctx.call(mkb, c, Arr("W"), w_off, x, f"{xo} + a0 * {wd} + j", Arr("T"), t_off, lanes, Arr("A"),
                              f"{scr} + j", pitch, lanes, rows, "np_ - j", Arr("W"), b_off, bias_mode, code, *params,
                              blocks),
        "    " + ctx.call("scatter_phases", Arr("A"), scr, pitch, y, yo, o_ch, kh, kw, kh, kw, oh, ow, wd, "a0", "a1"),
    ]
    if post_activation(act):
        body += [f"for o in range({o_ch}):",
                 "    " + ctx.call("act_copy", y, f"{yo} + o * {oh * ow} + lo * {kh * ow}", y,
                                   f"{yo} + o * {oh * ow} + lo * {kh * ow}", f"(hi - lo) * {kh * ow}",
                                   *act_args(act))]
    work = 2.0 * rows * c * pixels
    ctx.stage(Stage(f"conv2d-transpose {o_ch}x{c}x{kh}x{kw}/{kh}x{kw} phases-gemm", body, batched=y.batched,
                    split=h, max_blocks=max(1, min(h, math.ceil(work / CONV_GRAIN))), work=work))
