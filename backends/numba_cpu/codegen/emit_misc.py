"""Code generators for the data-movement and elementwise ops.

Each node is one stage of per-sample items (split into blocks where a sample
is big enough to share), calling a serial helper of ``cg_kernels`` with its
geometry as literals. Broadcast parameters (batch_norm, scale_shift, prelu)
are laid out once as float64 vectors (``broadcast.param_view``); merge
operands get their collapsed broadcast strides from the int64 table blob.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from keydnn.backends.broadcast import collapse_broadcast, param_view
from keydnn.backends.numba_cpu.codegen.program import GRAIN, Arr, EmitContext, Stage, Unsupported
from keydnn.backends.numba_cpu.codegen.codes import COPY, LINEAR, MERGE_CODES, RELU, RELU0, batch_norm_params, encode_activation
from keydnn.ir.ops.base import normalize_axis

__all__ = ["EMITTERS_MISC"]

logger = logging.getLogger(__name__)


def _blocks(work: float, split: int) -> int:
    return max(1, min(split, math.ceil(work / GRAIN)))


def emit_activation(ctx: EmitContext) -> None:
    x, y = ctx.ins[0], ctx.out
    act = encode_activation(ctx.op)
    cost = 1 if act[0] in (LINEAR, RELU0, RELU) else 16
    body = [ctx.call("act_copy", x, f"{x.at()} + lo", y, f"{y.at()} + lo", "hi - lo", act[0],
                     *(float(a) for a in act[1:]))]
    ctx.stage(Stage(getattr(ctx.op, "function", ctx.op.kind), body, batched=y.batched, split=x.size,
                    max_blocks=_blocks(x.size * cost, x.size), work=float(x.size * cost)))


def emit_softmax(ctx: EmitContext) -> None:
    x, y = ctx.ins[0], ctx.out
    rank = len(x.sample) + 1
    axis = normalize_axis(ctx.op.axis, rank)
    if axis == 0:
        raise Unsupported("softmax along the batch axis")
    s = x.sample
    outer, length, inner = math.prod(s[: axis - 1]), s[axis - 1], math.prod(s[axis:])
    body = [ctx.call("softmax_flat", x, x.at(), y, y.at(), outer, length, inner)]
    ctx.stage(Stage(f"softmax axis={axis}", body, batched=y.batched, work=float(16 * x.size)))


def _affine_like(ctx: EmitContext, params: list[np.ndarray], axis, helper: str, what: str) -> None:
    x, y = ctx.ins[0], ctx.out
    view = param_view(params, x.sample, axis)
    full = (1,) + x.sample
    outer, period, inner = view.dims(full)
    offs = [ctx.param64(p) for p in view.params]
    body = [ctx.call(helper, x, x.at(), y, y.at(), outer, period, inner, Arr("D"), *offs)]
    ctx.stage(Stage(f"{what} period={period}", body, batched=y.batched, work=float(2 * x.size)))


def emit_scale_shift(ctx: EmitContext) -> None:
    op = ctx.op
    axis = None if op.axis is None else normalize_axis(op.axis, len(ctx.ins[0].sample) + 1)
    _affine_like(ctx, [ctx.constant(1), ctx.constant(2)], axis, "affine_flat", "scale_shift")


def emit_batch_norm(ctx: EmitContext) -> None:
    op = ctx.op
    s, t = batch_norm_params(ctx._gen.graph.weights, ctx.node.inputs[1:5], op.epsilon)
    axis = normalize_axis(op.axis, len(ctx.ins[0].sample) + 1)
    _affine_like(ctx, [s, t], axis, "affine_flat", "batch_norm")


def emit_prelu(ctx: EmitContext) -> None:
    _affine_like(ctx, [ctx.constant(1)], None, "prelu_flat", "prelu")


def _ahwb(sample: tuple, layout: str) -> tuple[int, int, int, int]:
    """(planes, H, W, B) of one sample: NCHW planes are channels, NHWC has one plane of B channels."""
    if layout == "NCHW":
        c, h, w = sample
        return c, h, w, 1
    h, w, c = sample
    return 1, h, w, c


def emit_pad2d(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    a, h, w, b = _ahwb(x.sample, op.layout)
    _, oh, ow, _ = _ahwb(y.sample, op.layout)
    top, _, left, _ = op.pads
    body = [ctx.call("pad_flat", x, x.at(), y, y.at(), a, h, w * b, oh, ow * b, top, left * b, float(op.value))]
    ctx.stage(Stage(f"pad2d {list(op.pads)}", body, batched=y.batched, work=float(y.size)))


def emit_dilate_pad2d(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    a, h, w, b = _ahwb(x.sample, op.layout)
    _, oh, ow, _ = _ahwb(y.sample, op.layout)
    (fh, fw), (top, _, left, _) = op.factors, op.pads
    body = [ctx.call("dilate_flat", x, x.at(), y, y.at(), a, h, w, b, oh, ow, fh, fw, top, left)]
    ctx.stage(Stage(f"dilate_pad2d {list(op.factors)} {list(op.pads)}", body, batched=y.batched, work=float(y.size)))


def emit_crop2d(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    a, h, w, b = _ahwb(x.sample, op.layout)
    _, oh, ow, _ = _ahwb(y.sample, op.layout)
    top, _, left, _ = op.crops
    body = [ctx.call("crop_flat", x, x.at(), y, y.at(), a, h, w * b, oh, ow * b, top, left * b)]
    ctx.stage(Stage(f"crop2d {list(op.crops)}", body, batched=y.batched, work=float(y.size)))


def emit_upsample2d(ctx: EmitContext) -> None:
    op, x, y = ctx.op, ctx.ins[0], ctx.out
    a, h, w, b = _ahwb(x.sample, op.layout)
    fh, fw = op.factors
    body = [ctx.call("upsample_flat", x, x.at(), y, y.at(), a, h, w, b, fh, fw)]
    ctx.stage(Stage(f"upsample2d {fh}x{fw}", body, batched=y.batched, work=float(y.size)))


def emit_transpose(ctx: EmitContext) -> None:
    x, y = ctx.ins[0], ctx.out
    perm = tuple(ctx.op.perm)
    if perm[0] != 0:
        raise Unsupported(f"transpose {list(perm)} moves the batch axis")
    sample_perm = [p - 1 for p in perm[1:]]
    strides = [math.prod(x.sample[k + 1:]) for k in range(len(x.sample))]
    rank = len(sample_perm)
    work = float(2 * y.size)
    if rank == 0:
        ctx.stage(Stage(f"transpose {list(perm)}", [ctx.call("copy_flat", x, x.at(), y, y.at(), 1)],
                        batched=y.batched, work=work))
        return
    turn = next((k for k in range(1, rank) if sample_perm == list(range(k, rank)) + list(range(k))), None)
    if turn is not None:  # a rotation of the axes (NHWC <-> NCHW): y (C x R) = x (R x C) transposed
        r_, c_ = math.prod(x.sample[:turn]), math.prod(x.sample[turn:])
        body = [ctx.call("transpose_matrix", x, x.at(), y, y.at(), r_, c_, "lo", "hi")]
        ctx.stage(Stage(f"transpose {list(perm)} as {r_}x{c_}", body, batched=y.batched, split=max(1, c_),
                        max_blocks=_blocks(2 * work, max(1, c_)), work=work))
        return
    shape_off = ctx.table(y.sample)
    stride_off = ctx.table([strides[p] for p in sample_perm])
    rows = y.size // y.sample[-1] if y.sample[-1] else 0  # innermost runs: items split them (an input
    # image's NHWC -> NCHW transpose ran on one thread at batch 1); a gathered element costs about a cycle,
    # several times a vectorized one, hence the weight on the work when splitting
    body = [ctx.call("transpose_flat", x, x.at(), y, y.at(), Arr("T"), shape_off, stride_off, rank, "lo", "hi")]
    ctx.stage(Stage(f"transpose {list(perm)}", body, batched=y.batched, split=max(1, rows),
                    max_blocks=_blocks(8 * work, max(1, rows)), work=work))


def emit_merge(ctx: EmitContext) -> None:
    """Operands of the result's shape: per block of elements, one vectorized pass per operand (none for an
    operand the result overwrites in place), the folded activation (``ctx.fused``) in the last. Broadcast
    operands: per sample, over collapsed broadcast strides, the activation as a pass of its own."""
    y = ctx.out
    code = MERGE_CODES[ctx.op.kind]
    n_ops = len(ctx.ins)
    act = encode_activation(ctx.fused) if ctx.fused is not None else (LINEAR,)
    act_args = (act[0],) + tuple(float(a) for a in act[1:]) + (0.0,) * (4 - len(act[1:]))
    work = float(n_ops * y.size)

    def scale(k: int) -> float:
        return 1.0 / n_ops if ctx.op.kind == "avg" and k == n_ops - 1 else 1.0

    if all(x.sample == y.sample and x.batched == y.batched for x in ctx.ins):
        body = []
        for k, x in enumerate(ctx.ins):
            if k == 0 and x.storage is y.storage:  # in place: y already holds operand 0
                continue
            last = k == n_ops - 1
            body.append(ctx.call("merge_span", x, f"{x.at()} + lo", y, f"{y.at()} + lo", "hi - lo",
                                 COPY if k == 0 else code, scale(k), *(act_args if last else (LINEAR, 0.0, 0.0, 0.0, 0.0))))
        ctx.stage(Stage(f"{ctx.op.kind} x{n_ops}" + (f" + {act_name(ctx.fused)}" if ctx.fused is not None else ""),
                        body, batched=y.batched, split=y.size, max_blocks=_blocks(work, y.size), work=work))
        return
    dims, strides = collapse_broadcast(y.sample, [x.sample for x in ctx.ins]) if y.sample else ([1], [[0]] * n_ops)
    d_off = ctx.table(dims)
    body = []
    for k, x in enumerate(ctx.ins):
        s_off = ctx.table(strides[k])
        body.append(ctx.call("merge_flat", x, x.at(), y, y.at(), Arr("T"), d_off, s_off, len(dims),
                             COPY if k == 0 else code, scale(k)))
    if act[0] != LINEAR:
        body.append(ctx.call("act_copy", y, y.at(), y, y.at(), y.size, *act_args))
    ctx.stage(Stage(f"{ctx.op.kind} x{n_ops}" + (f" + {act_name(ctx.fused)}" if ctx.fused is not None else ""),
                    body, batched=y.batched, work=work))


def act_name(op) -> str:
    return getattr(op, "function", op.kind)


def emit_concat(ctx: EmitContext) -> None:
    y = ctx.out
    axis = normalize_axis(ctx.op.axis, len(y.sample) + 1)
    outer = math.prod(y.sample[: axis - 1])
    row = math.prod(y.sample[axis - 1:])
    body, offset = [], 0
    for x in ctx.ins:
        part = math.prod(x.sample[axis - 1:])
        body.append(ctx.call("concat_rows", x, x.at(), y, y.at(), outer, part, row, offset))
        offset += part
    ctx.stage(Stage(f"concat axis={axis} x{len(ctx.ins)}", body, batched=y.batched, work=float(y.size)))


EMITTERS_MISC = {
    "relu": emit_activation,
    "activation": emit_activation,
    "softmax": emit_softmax,
    "scale_shift": emit_scale_shift,
    "batch_norm": emit_batch_norm,
    "prelu": emit_prelu,
    "pad2d": emit_pad2d,
    "crop2d": emit_crop2d,
    "upsample2d": emit_upsample2d,
    "dilate_pad2d": emit_dilate_pad2d,
    "transpose": emit_transpose,
    "add": emit_merge, "sub": emit_merge, "mul": emit_merge, "avg": emit_merge, "max": emit_merge, "min": emit_merge,
    "concat": emit_concat,
}
