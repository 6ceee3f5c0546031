"""Data movement: free views (flatten, reshape, squeeze, expand_dims), transpose, and 2-D gathers.

Every buffer is a flat, C-ordered device array, so a row-major reshape of any
kind is the same flat array: those ops launch nothing. Transpose gathers with
one thread per output element. pad2d, crop2d and upsample2d (NCHW) are one
gather: output pixel (i, j) reads input ``((i + off_h) // fh, (j + off_w) // fw)``
or the fill value outside the input — a pad is ``off = -top, f = 1``, a crop
``off = +top, f = 1``, a nearest upsample ``off = 0, f = factor``.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Sequence

from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, grid_1d, register_kernel, require_nchw,
)

__all__ = ["lower_view", "lower_transpose", "lower_gather2d"]

logger = logging.getLogger(__name__)


@cuda.jit
def transpose_kernel(x, out, total, out_shape, src_strides):  # pragma: no cover - device code
    """``src_strides[k]`` is the input stride (in elements) of output axis k."""
    rank = len(out_shape)
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        rem = t
        src = 0
        for k in range(rank - 1, -1, -1):
            src += (rem % out_shape[k]) * src_strides[k]
            rem //= out_shape[k]
        out[t] = x[src]


@functools.lru_cache(maxsize=None)
def _gather2d_kernel(dtype_name: str) -> Callable:
    @cuda.jit
    def gather2d(x, out, total, geom, fill):  # pragma: no cover - device code
        h, w, oh_n, ow_n, off_h, off_w, fh, fw = geom
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            j = t % ow_n
            i = (t // ow_n) % oh_n
            plane = t // (ow_n * oh_n)
            ih = (i + off_h) // fh
            iw = (j + off_w) // fw
            if 0 <= ih < h and 0 <= iw < w:
                out[t] = x[(plane * h + ih) * w + iw]
            else:
                out[t] = fill

    return gather2d


def _same_storage(inputs: Sequence, out, scratch):
    return inputs[0]


def _prepare_view(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
    return Prepared(_same_storage)


@register_kernel("flatten", "reshape", "squeeze", "expand_dims")
def lower_view(ctx: LowerContext) -> LoweredOp:
    return LoweredOp(prepare=_prepare_view, allocates=False, description=f"{ctx.node.op.kind} (view)")


@register_kernel("transpose")
def lower_transpose(ctx: LowerContext) -> LoweredOp:
    perm = tuple(ctx.node.op.perm)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        shape = in_shapes[0]
        strides = [math.prod(shape[k + 1:]) for k in range(len(shape))]
        src_strides, shape_out = tuple(strides[p] for p in perm), tuple(out_shape)
        total = math.prod(out_shape)
        kernel = configure(transpose_kernel, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            kernel(inputs[0], out, total, shape_out, src_strides)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=f"transpose {list(perm)}")


@register_kernel("pad2d", "crop2d", "upsample2d")
def lower_gather2d(ctx: LowerContext) -> LoweredOp:
    require_nchw(ctx)
    op = ctx.node.op
    if op.kind == "pad2d":
        offsets, factors, fill = (-op.pads[0], -op.pads[2]), (1, 1), op.value
    elif op.kind == "crop2d":
        offsets, factors, fill = (op.crops[0], op.crops[2]), (1, 1), 0.0
    else:
        offsets, factors, fill = (0, 0), tuple(op.factors), 0.0
    fill_value = ctx.scalar(fill)
    kernel_of = _gather2d_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        geom = (in_shapes[0][2], in_shapes[0][3], out_shape[2], out_shape[3], *offsets, *factors)
        total = math.prod(out_shape)
        kernel = configure(kernel_of, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            kernel(inputs[0], out, total, geom, fill_value)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=f"{op.kind} (gather)")
