"""Per-op kernels of the 5-D volume ops (NCDHW), built on the 2-D kernels rather than beside them.

* ``conv3d``: the input's depth windows are unfolded into channels, one
  2-D image per output depth plane (``unfold_depth``: (N, OD, C*KD, H, W),
  channel ``c*KD + kd`` is input plane ``od*sd + kd*dd - front``, zero outside),
  and the ``conv2d`` lowering (im2col / direct / BLAS by shape, bias and
  epilogue fused) runs over the N*OD images with the weight (O, C/g*KD, KH, KW);
  the result is moved from (N, OD, O, ...) to (N, O, OD, ...). Groups stay
  contiguous channel ranges, so grouped filters pass through as they are.
* pools and ``upsample3d`` are separable: the 2-D kernel over the H-W planes
  of every (channel, depth) pair, then again over D with the H*W pixels of a
  plane as one row (max and nearest repeat factor per axis; an average's
  count of in-window voxels is the product of its per-axis counts, so
  dividing in each pass excludes padding exactly as Keras does).
* ``pad3d`` (zero-stuffing + border) and ``crop3d`` are strided copies.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.ops.kernels_conv import lower_conv2d
from keydnn.backends.numba_cpu.ops.kernels_pool import avg_pool2d_kernel, max_pool2d_kernel
from keydnn.backends.numba_cpu.ops.kernels_spatial import upsample_kernel
from keydnn.backends.numba_cpu.ops.lowering import (
    PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, Unsupported, register_kernel,
)
from keydnn.ir.graph import Node
from keydnn.ir.ops import Conv2d
from keydnn.ir.types import TensorType, Value

__all__ = ["unfold_depth"]

logger = logging.getLogger(__name__)


def _require_ncdhw(ctx: LowerContext) -> None:
    if ctx.node.op.layout != "NCDHW":
        raise Unsupported(f"{ctx.node.op.kind} with layout {ctx.node.op.layout} is not supported by numba-cpu "
                          "(kernels are NCDHW); run the canonicalize-layout pass first")


@numba.njit(**PARALLEL_JIT_OPTIONS)
def unfold_depth(x, out, kd, sd, dd, front):
    """out (N, OD, C, KD, H*W)[n, od, c, k] = x (N, C, D, H*W)[n, c, od*sd + k*dd - front] (zeros outside)."""
    n_, c_, d_, hw = x.shape
    od_ = out.shape[1]
    for t in prange(n_ * od_):
        n = t // od_
        od = t - n * od_
        for c in range(c_):
            for k in range(kd):
                src = od * sd + k * dd - front
                dst = out[n, od, c, k]
                if src < 0 or src >= d_:
                    for j in range(hw):
                        dst[j] = 0.0
                else:
                    xs = x[n, c, src]
                    for j in range(hw):
                        dst[j] = xs[j]


@register_kernel("conv3d")
def lower_conv3d(ctx: LowerContext) -> LoweredOp:
    """Depth-unfold + the conv2d lowering over N*OD planes (see the module docstring)."""
    _require_ncdhw(ctx)
    op = ctx.node.op
    w = ctx.constant(1)
    o_ch, cg, kd, kh, kw = w.shape
    sd, sh, sw = op.strides
    dd, dh, dw = op.dilations
    front = op.pads[0]
    _, c, d, h, wd = ctx.in_types[0].shape
    _, _, od, oh, ow = ctx.out_type.shape
    w2 = np.ascontiguousarray(w.reshape(o_ch, cg * kd, kh, kw))
    weights = {"w": w2}
    inputs = ["x", "w"]
    if len(ctx.node.inputs) > 2:
        weights["b"] = ctx.constant(2)
        inputs.append("b")
    conv = Conv2d(strides=(sh, sw), dilations=(dh, dw), pads=op.pads[2:], groups=op.groups, layout="NCHW",
                  activation=op.activation)
    in2 = TensorType(shape=("N", c * kd, h, wd), dtype=ctx.out_type.dtype, layout="NCHW")
    out2 = TensorType(shape=("N", o_ch, oh, ow), dtype=ctx.out_type.dtype, layout="NCHW")
    node2 = Node(name=f"{ctx.node.name}.planes", op=conv, inputs=tuple(inputs), outputs=(Value(name="y", type=out2),))
    w_type = TensorType(shape=w2.shape, dtype=ctx.out_type.dtype)
    types2 = (in2, w_type) + ((TensorType(shape=(o_ch,), dtype=ctx.out_type.dtype),) if "b" in weights else ())
    planes = lower_conv2d(LowerContext(node=node2, in_types=types2, out_type=out2, weights=weights))

    def run(inputs_: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs_[0]
        n = x.shape[0]
        unfolded = np.empty((n, od, c, kd, h * wd), dtype=x.dtype)
        unfold_depth(x.reshape(n, c, d, h * wd), unfolded, kd, sd, dd, front)
        y = np.empty((n * od, o_ch, oh, ow), dtype=x.dtype)
        planes.run([unfolded.reshape(n * od, c * kd, h, wd)], y)
        out[...] = y.reshape(n, od, o_ch, oh, ow).transpose(0, 2, 1, 3, 4)
        return out

    return LoweredOp(run=run, description=f"conv3d {o_ch}x{cg}x{kd}x{kh}x{kw} groups={op.groups} as "
                     f"{planes.description} over depth planes", work_per_element=cg * kd * kh * kw)


def _lower_pool3d(ctx: LowerContext, kernel) -> LoweredOp:
    _require_ncdhw(ctx)
    op = ctx.node.op
    kd, kh, kw = op.kernel
    sd, sh, sw = op.strides
    front, top, left = op.pads[0], op.pads[2], op.pads[4]

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = np.ascontiguousarray(inputs[0])
        n, c, d, h, w = x.shape
        od, oh, ow = out.shape[2:]
        planes = np.empty(n * c * d * oh * ow, dtype=x.dtype)
        kernel(x.reshape(-1), planes, n * c * d, h, w, oh, ow, kh, kw, sh, sw, top, left)
        kernel(planes, out.reshape(-1), n * c, d, oh * ow, od, oh * ow, kd, 1, sd, 1, front, 0)
        return out

    return LoweredOp(run=run, description=f"{op.kind} {kd}x{kh}x{kw}/{sd}x{sh}x{sw} (H-W planes, then D)",
                     work_per_element=kd * kh * kw)


@register_kernel("max_pool3d")
def lower_max_pool3d(ctx: LowerContext) -> LoweredOp:
    return _lower_pool3d(ctx, max_pool2d_kernel)


@register_kernel("avg_pool3d")
def lower_avg_pool3d(ctx: LowerContext) -> LoweredOp:
    return _lower_pool3d(ctx, avg_pool2d_kernel)


@register_kernel("upsample3d")
def lower_upsample3d(ctx: LowerContext) -> LoweredOp:
    _require_ncdhw(ctx)
    op = ctx.node.op
    fd, fh, fw = op.factors

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = np.ascontiguousarray(inputs[0])
        n, c, d, h, w = x.shape
        planes = np.empty(n * c * d * h * fh * w * fw, dtype=x.dtype)
        upsample_kernel(x.reshape(-1), planes, n * c * d, h, w, 1, fh, fw)
        upsample_kernel(planes, out.reshape(-1), n * c, d, 1, h * fh * w * fw, fd, 1)
        return out

    return LoweredOp(run=run, description=f"upsample3d {fd}x{fh}x{fw} (H-W planes, then D)")


@register_kernel("pad3d")
def lower_pad3d(ctx: LowerContext) -> LoweredOp:
    _require_ncdhw(ctx)
    op = ctx.node.op
    (fd, fh, fw), p = op.factors, op.pads

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        d, h, w = x.shape[2:]
        out.fill(0)
        out[:, :, p[0]:p[0] + (d - 1) * fd + 1:fd, p[2]:p[2] + (h - 1) * fh + 1:fh,
            p[4]:p[4] + (w - 1) * fw + 1:fw] = x
        return out

    return LoweredOp(run=run, description=f"pad3d {list(op.factors)} {list(op.pads)}")


@register_kernel("crop3d")
def lower_crop3d(ctx: LowerContext) -> LoweredOp:
    _require_ncdhw(ctx)
    op = ctx.node.op
    c = op.crops

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = inputs[0]
        d, h, w = x.shape[2:]
        out[...] = x[:, :, c[0]:d - c[1], c[2]:h - c[3], c[4]:w - c[5]]
        return out

    return LoweredOp(run=run, description=f"crop3d {list(op.crops)}")
