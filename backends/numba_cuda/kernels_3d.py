"""numba-cuda kernels of the 5-D volume ops (NCDHW), built on the 2-D kernels as the CPU backend is.

* ``conv3d``: ``unfold_depth`` writes the depth windows as channels, one 2-D
  image per output depth plane ((N*OD, C*KD, H, W); channel ``c*KD + kd`` is
  input plane ``od*sd + kd*dd - front``, zero outside), the ``conv2d``
  lowering (implicit GEMM or direct, bias and epilogue fused) runs on those
  N*OD images with the weight (O, C/g*KD, KH, KW), and a transpose moves
  (N, OD, O, ...) to (N, O, OD, ...). All intermediates live in the step's
  scratch.
* pools, ``pad3d`` (zero-stuffing + border), ``crop3d`` and ``upsample3d``
  are two launches of the 2-D kernel: over the H-W planes of every (channel,
  depth), into scratch, then over D with a plane's pixels as one row (max,
  average with padding uncounted, gathers and stuffing all factor per axis).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Sequence

import numpy as np

from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.kernels_conv import lower_conv2d
from keydnn.backends.numba_cuda.kernels_pool import AVG, MAX, _pool_kernel
from keydnn.backends.numba_cuda.kernels_resize import _dilate_kernel
from keydnn.backends.numba_cuda.kernels_shape import _gather2d_kernel, transpose_kernel
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, Unsupported, configure, grid_1d, register_kernel,
)
from keydnn.ir.graph import Node
from keydnn.ir.ops import Conv2d
from keydnn.ir.types import TensorType, Value

__all__ = ["lower_conv3d", "lower_pool3d"]

logger = logging.getLogger(__name__)


def _require_ncdhw(ctx: LowerContext) -> None:
    if ctx.node.op.layout != "NCDHW":
        raise Unsupported(f"{ctx.node.op.kind} with layout {ctx.node.op.layout} is not supported by numba-cuda "
                          "(kernels are NCDHW); run the canonicalize-layout pass first")


@functools.lru_cache(maxsize=None)
def _unfold_kernel(dtype_name: str) -> Callable:
    zero = np.dtype(dtype_name).type(0)

    @cuda.jit
    def unfold_depth(x, out, total, c_n, d_n, hw, od_n, kd_n, sd, dd, front):  # pragma: no cover - device code
        """out (N, OD, C, KD, HW)[n, od, c, k, j] = x (N, C, D, HW)[n, c, od*sd + k*dd - front, j]."""
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            j = t % hw
            r = t // hw
            k = r % kd_n
            r //= kd_n
            c = r % c_n
            r //= c_n
            od = r % od_n
            n = r // od_n
            z = od * sd + k * dd - front
            v = zero
            if 0 <= z < d_n:
                v = x[((n * c_n + c) * d_n + z) * hw + j]
            out[t] = v

    return unfold_depth


@register_kernel("conv3d")
def lower_conv3d(ctx: LowerContext) -> LoweredOp:
    _require_ncdhw(ctx)
    op = ctx.node.op
    w = ctx.constant(1)
    o_ch, cg, kd, kh, kw = w.shape
    sd = op.strides[0]
    dd = op.dilations[0]
    front = op.pads[0]
    _, c, d, h, wd = ctx.in_types[0].shape
    _, _, od, oh, ow = ctx.out_type.shape
    weights = {"w": w.reshape(o_ch, cg * kd, kh, kw)}
    names = ["x", "w"]
    b = ctx.constant(2)
    if b is not None:
        weights["b"] = b
        names.append("b")
    dtype = ctx.out_type.dtype
    conv = Conv2d(strides=op.strides[1:], dilations=op.dilations[1:], pads=op.pads[2:], groups=op.groups,
                  layout="NCHW", activation=op.activation)
    in2 = TensorType(shape=("N", c * kd, h, wd), dtype=dtype, layout="NCHW")
    out2 = TensorType(shape=("N", o_ch, oh, ow), dtype=dtype, layout="NCHW")
    types2 = (in2, TensorType(shape=(o_ch, cg * kd, kh, kw), dtype=dtype)) + \
        ((TensorType(shape=(o_ch,), dtype=dtype),) if b is not None else ())
    node2 = Node(name=f"{ctx.node.name}.planes", op=conv, inputs=tuple(names), outputs=(Value(name="y", type=out2),))
    planes = lower_conv2d(LowerContext(node=node2, in_types=types2, out_type=out2, weights=weights,
                                       _uploads=ctx._uploads))
    unfold_of = _unfold_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        n = in_shapes[0][0]
        unfolded = n * od * c * kd * h * wd
        conv_out = n * od * o_ch * oh * ow
        inner = planes.prepare(((n * od, c * kd, h, wd),) + tuple(t.shape for t in types2[1:]),
                               (n * od, o_ch, oh, ow))
        unfold = configure(unfold_of, grid_1d(unfolded), THREADS)
        total = math.prod(out_shape)
        move = configure(transpose_kernel, grid_1d(total), THREADS)
        plane = oh * ow
        shape_out = (n, o_ch, od, plane)
        src_strides = (od * o_ch * plane, plane, o_ch * plane, 1)  # (N, OD, O, P) read as (N, O, OD, P)

        def launch(inputs: Sequence, out, scratch):
            if total == 0:
                return out
            buf_in, buf_out = scratch[:unfolded], scratch[unfolded:unfolded + conv_out]
            rest = scratch[unfolded + conv_out:] if inner.scratch else None
            unfold(inputs[0], buf_in, unfolded, c, d, h * wd, od, kd, sd, dd, front)
            inner.launch([buf_in], buf_out, rest)
            move(buf_out, out, total, shape_out, src_strides)
            return out

        return Prepared(launch, scratch=unfolded + conv_out + inner.scratch)

    return LoweredOp(prepare=prepare, description=f"conv3d {o_ch}x{cg}x{kd}x{kh}x{kw} groups={op.groups} as "
                     f"{planes.description} over depth planes")


@register_kernel("max_pool3d", "avg_pool3d")
def lower_pool3d(ctx: LowerContext) -> LoweredOp:
    _require_ncdhw(ctx)
    op = ctx.node.op
    mode = MAX if op.kind == "max_pool3d" else AVG
    (kd, kh, kw), (sd, sh, sw) = op.kernel, op.strides
    front, top, left = op.pads[0], op.pads[2], op.pads[4]
    kernel_of = _pool_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        n, c, d, h, w = in_shapes[0]
        od, oh, ow = out_shape[2:]
        mid, total = n * c * d * oh * ow, math.prod(out_shape)
        geom1 = (h, w, oh, ow, kh, kw, sh, sw, top, left)
        geom2 = (d, oh * ow, od, oh * ow, kd, 1, sd, 1, front, 0)
        first = configure(kernel_of, grid_1d(mid), THREADS)
        second = configure(kernel_of, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if total:
                first(inputs[0], scratch, mid, geom1, mode)
                second(scratch, out, total, geom2, mode)
            return out

        return Prepared(launch, scratch=mid)

    return LoweredOp(prepare=prepare, description=f"{op.kind} {kd}x{kh}x{kw}/{sd}x{sh}x{sw} (planes, then depth)")


@register_kernel("pad3d")
def lower_pad3d(ctx: LowerContext) -> LoweredOp:
    _require_ncdhw(ctx)
    op = ctx.node.op
    (fd, fh, fw), p = op.factors, op.pads
    kernel_of = _dilate_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        n, c, d, h, w = in_shapes[0]
        od, oh, ow = out_shape[2:]
        mid, total = n * c * d * oh * ow, math.prod(out_shape)
        first = configure(kernel_of, grid_1d(mid), THREADS)
        second = configure(kernel_of, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if total:
                first(inputs[0], scratch, mid, h, w, oh, ow, fh, fw, p[2], p[4])
                second(scratch, out, total, d, oh * ow, od, oh * ow, fd, 1, p[0], 0)
            return out

        return Prepared(launch, scratch=mid)

    return LoweredOp(prepare=prepare, description=f"pad3d {list(op.factors)} {list(op.pads)}")


@register_kernel("crop3d", "upsample3d")
def lower_gather3d(ctx: LowerContext) -> LoweredOp:
    """Gathers: output voxel i reads input (i + offset) // factor per axis, as the 2-D gather."""
    _require_ncdhw(ctx)
    op = ctx.node.op
    if op.kind == "crop3d":
        offsets, factors = (op.crops[0], op.crops[2], op.crops[4]), (1, 1, 1)
    else:
        offsets, factors = (0, 0, 0), tuple(op.factors)
    fill = ctx.scalar(0.0)
    kernel_of = _gather2d_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        n, c, d, h, w = in_shapes[0]
        od, oh, ow = out_shape[2:]
        mid, total = n * c * d * oh * ow, math.prod(out_shape)
        geom1 = (h, w, oh, ow, offsets[1], offsets[2], factors[1], factors[2])
        geom2 = (d, oh * ow, od, oh * ow, offsets[0], 0, factors[0], 1)
        first = configure(kernel_of, grid_1d(mid), THREADS)
        second = configure(kernel_of, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if total:
                first(inputs[0], scratch, mid, geom1, fill)
                second(scratch, out, total, geom2, fill)
            return out

        return Prepared(launch, scratch=mid)

    return LoweredOp(prepare=prepare, description=f"{op.kind} (gathers: planes, then depth)")
