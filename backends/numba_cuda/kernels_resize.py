"""CUDA kernels of ``dilate_pad2d`` and ``resize2d`` (NCHW; one thread per output element)."""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import numpy as np

from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, grid_1d, register_kernel, require_nchw,
)
from keydnn.ir.ops.resize import resize_taps

__all__ = ["lower_dilate_pad2d", "lower_resize2d"]


@functools.lru_cache(maxsize=None)
def _dilate_kernel(dtype_name: str) -> Callable:
    zero = np.dtype(dtype_name).type(0)

    @cuda.jit
    def dilate(x, out, total, h, w, oh, ow, fh, fw, top, left):  # pragma: no cover - device code
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            q = t % ow
            o = (t // ow) % oh
            plane = t // (ow * oh)
            r, s = o - top, q - left
            v = zero
            if r >= 0 and s >= 0 and r % fh == 0 and s % fw == 0 and r // fh < h and s // fw < w:
                v = x[(plane * h + r // fh) * w + s // fw]
            out[t] = v

    return dilate


@functools.lru_cache(maxsize=None)
def _resize_kernel(dtype_name: str) -> Callable:
    @cuda.jit
    def resize(x, out, total, h, w, oh, ow, ih, wh, iw, ww):  # pragma: no cover - device code
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            q = t % ow
            o = (t // ow) % oh
            plane = t // (ow * oh)
            s = 0.0
            for a in range(4):
                wa = wh[o * 4 + a]
                if wa != 0.0:
                    for b in range(4):
                        wb = ww[q * 4 + b]
                        if wb != 0.0:
                            s += wa * wb * x[(plane * h + ih[o * 4 + a]) * w + iw[q * 4 + b]]
            out[t] = s

    return resize


@register_kernel("dilate_pad2d")
def lower_dilate_pad2d(ctx: LowerContext) -> LoweredOp:
    require_nchw(ctx)
    op = ctx.node.op
    kernel_of = _dilate_kernel(ctx.dtype.name)
    (fh, fw), (top, _, left, _) = op.factors, op.pads

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        _, _, h, w = in_shapes[0]
        oh, ow = out_shape[2], out_shape[3]
        total = math.prod(out_shape)
        kernel = configure(kernel_of, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if total:
                kernel(inputs[0], out, total, h, w, oh, ow, fh, fw, top, left)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description="dilate_pad2d")


@register_kernel("resize2d")
def lower_resize2d(ctx: LowerContext) -> LoweredOp:
    require_nchw(ctx)
    op = ctx.node.op
    kernel_of = _resize_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        _, _, h, w = in_shapes[0]
        oh, ow = op.size
        ih, wh = resize_taps(h, oh, op.method, op.half_pixel)
        iw, ww = resize_taps(w, ow, op.method, op.half_pixel)
        tabs = [cuda.to_device(np.ascontiguousarray(a).reshape(-1)) for a in (ih, wh, iw, ww)]
        total = math.prod(out_shape)
        kernel = configure(kernel_of, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            if total:
                kernel(inputs[0], out, total, h, w, oh, ow, *tabs)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=f"resize2d {op.method}")
