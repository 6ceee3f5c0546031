"""Pooling (NCHW): windowed max / average, and global max / average.

Windowed pools run one thread per output element. Windows are clipped to the
input instead of padding it, which gives both padding rules for free: a padded
position never wins a max (it acts as -inf) and is not counted by an average
(Keras 'same' semantics). Global pools run one block per (sample, channel)
plane: threads stride over the plane, then a shared-memory tree reduction.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Sequence

import numba
import numpy as np

from keydnn.backends.numba_cuda.device import cuda, simulator_enabled
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, grid_1d, register_kernel, require_nchw,
)

__all__ = ["lower_pool2d", "lower_global_pool2d", "REDUCE_THREADS"]

logger = logging.getLogger(__name__)

MAX, AVG = 0, 1
#: Threads per plane of the global pools (a power of two, for the tree reduction).
REDUCE_THREADS = 8 if simulator_enabled() else 128
_MAX_PLANE_BLOCKS = 4 if simulator_enabled() else 65535


@functools.lru_cache(maxsize=None)
def _pool_kernel(dtype_name: str) -> Callable:
    f = np.dtype(dtype_name).type
    zero = f(0)

    @cuda.jit
    def pool2d(x, out, total, geom, mode):  # pragma: no cover - device code
        h, w, oh_n, ow_n, kh, kw, sh, sw, pt, pl = geom
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            ow = t % ow_n
            oh = (t // ow_n) % oh_n
            base = (t // (ow_n * oh_n)) * h * w
            h0 = oh * sh - pt
            w0 = ow * sw - pl
            h_lo = h0 if h0 > 0 else 0
            w_lo = w0 if w0 > 0 else 0
            h_hi = h0 + kh if h0 + kh < h else h
            w_hi = w0 + kw if w0 + kw < w else w
            if mode == MAX:
                m = x[base + h_lo * w + w_lo]
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        v = x[base + ih * w + iw]
                        if v > m or v != v:
                            m = v
                out[t] = m
            else:
                s = zero
                for ih in range(h_lo, h_hi):
                    for iw in range(w_lo, w_hi):
                        s += x[base + ih * w + iw]
                out[t] = s / f((h_hi - h_lo) * (w_hi - w_lo))

    return pool2d


@functools.lru_cache(maxsize=None)
def _global_kernel(dtype_name: str, block: int) -> Callable:
    f = np.dtype(dtype_name).type
    nbtype = numba.from_dtype(np.dtype(dtype_name))
    zero = f(0)

    @cuda.jit
    def global_pool(x, out, planes, size, mode):  # pragma: no cover - device code
        buf = cuda.shared.array(block, nbtype)
        tid = cuda.threadIdx.x
        for r in range(cuda.blockIdx.x, planes, cuda.gridDim.x):
            base = r * size
            acc = x[base] if mode == MAX else zero
            for j in range(tid, size, block):
                v = x[base + j]
                if mode != MAX:
                    acc += v
                elif v > acc or v != v:
                    acc = v
            buf[tid] = acc
            cuda.syncthreads()
            half = block // 2
            while half > 0:
                if tid < half:
                    other = buf[tid + half]
                    if mode != MAX:
                        buf[tid] += other
                    elif other > buf[tid] or other != other:
                        buf[tid] = other
                cuda.syncthreads()
                half //= 2
            if tid == 0:
                out[r] = buf[0] if mode == MAX else buf[0] / f(size)
            cuda.syncthreads()

    return global_pool


@register_kernel("max_pool2d", "avg_pool2d")
def lower_pool2d(ctx: LowerContext) -> LoweredOp:
    require_nchw(ctx)
    op = ctx.node.op
    mode = MAX if op.kind == "max_pool2d" else AVG
    static = (*op.kernel, *op.strides, op.pads[0], op.pads[2])
    kernel_of = _pool_kernel(ctx.dtype.name)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        geom = (in_shapes[0][2], in_shapes[0][3], out_shape[2], out_shape[3], *static)
        total = math.prod(out_shape)
        kernel = configure(kernel_of, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            kernel(inputs[0], out, total, geom, mode)
            return out

        return Prepared(launch)

    (kh, kw), (sh, sw) = op.kernel, op.strides
    return LoweredOp(prepare=prepare, description=f"{op.kind} {kh}x{kw}/{sh}x{sw}")


@register_kernel("global_avg_pool2d", "global_max_pool2d")
def lower_global_pool2d(ctx: LowerContext) -> LoweredOp:
    """Both keepdims forms hold the same N*C values, so one flat kernel serves them."""
    require_nchw(ctx)
    mode = MAX if ctx.node.op.kind == "global_max_pool2d" else AVG
    kernel_of = _global_kernel(ctx.dtype.name, REDUCE_THREADS)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        n, c, h, w = in_shapes[0]
        planes, size = n * c, h * w
        kernel = configure(kernel_of, max(1, min(planes, _MAX_PLANE_BLOCKS)), REDUCE_THREADS)

        def launch(inputs: Sequence, out, scratch):
            kernel(inputs[0], out, planes, size, mode)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=ctx.node.op.kind)
