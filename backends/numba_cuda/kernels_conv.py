"""conv2d: implicit GEMM on the tiled template, or direct loops for depthwise filters.

Per group g the convolution is ``out[g] (OG x N*OH*OW) = W[g] (OG x CG*KH*KW)
@ im2col(x)[g] (CG*KH*KW x N*OH*OW)``. The im2col matrix is never built: the
B loader decodes (k -> c, i, j; col -> n, oh, ow) and reads the input pixel,
or 0 in the padding. Weights are uploaded once, transposed to (groups, K, OG)
so that the A tile loads are coalesced along output channels. Depthwise
filters (one input channel per group) make a 1-row GEMM per group that
would waste almost all of a tile, so they take a one-thread-per-output kernel.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Optional, Sequence

import numpy as np

from keydnn.backends.numba_cuda.activations import epilogue_for, make_activation
from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.gemm import (
    GemmOperands, choose_splits, choose_tile, gemm_grid, launch_reduce, make_gemm, split_chunk,
)
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, grid_1d, register_kernel, require_nchw,
)

__all__ = ["lower_conv2d", "FORCE_ALGORITHM", "ALGORITHMS", "choose_algorithm"]

logger = logging.getLogger(__name__)

#: Tests set this to "direct" or "implicit-gemm" to exercise one kernel on every shape.
FORCE_ALGORITHM: Optional[str] = None
ALGORITHMS = ("implicit-gemm", "direct")

# geom = (C, H, W, OH, OW, KH, KW, SH, SW, DH, DW, PT, PL, CG, OG, O, KK)


@cuda.jit(device=True)
def _weight_index(geom, g, m, k):  # pragma: no cover - device code
    return (g * geom[16] + k) * geom[14] + m


@cuda.jit(device=True)
def _patch_index(geom, g, k, col):  # pragma: no cover - device code
    kh, kw, ohw = geom[5], geom[6], geom[3] * geom[4]
    c = k // (kh * kw)
    r = k - c * kh * kw
    i = r // kw
    j = r - i * kw
    n = col // ohw
    p = col - n * ohw
    oh = p // geom[4]
    ow = p - oh * geom[4]
    ih = oh * geom[7] - geom[11] + i * geom[9]
    iw = ow * geom[8] - geom[12] + j * geom[10]
    if ih < 0 or ih >= geom[1] or iw < 0 or iw >= geom[2]:
        return -1
    return ((n * geom[0] + g * geom[13] + c) * geom[1] + ih) * geom[2] + iw


@cuda.jit(device=True)
def _out_index(geom, g, m, col):  # pragma: no cover - device code
    ohw = geom[3] * geom[4]
    n = col // ohw
    return (n * geom[15] + g * geom[14] + m) * ohw + (col - n * ohw)


@cuda.jit(device=True)
def _bias_index(geom, g, m, col):  # pragma: no cover - device code
    return g * geom[14] + m


_OPERANDS = GemmOperands(a_index=_weight_index, b_index=_patch_index, out_index=_out_index, bias_index=_bias_index,
                         a_k_fast=False)

@functools.lru_cache(maxsize=None)
def _direct_kernel(dtype_name: str, code: int):
    """One thread per output element; loops over the CG x KH x KW window of its group."""
    act = make_activation(dtype_name, code)
    zero = np.dtype(dtype_name).type(0)

    @cuda.jit
    def conv_direct(x, w, bias, out, geom, total, p0, p1, p2, p3):  # pragma: no cover - device code
        c_in, h, wd, oh_n, ow_n, kh, kw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5], geom[6]
        cg, og, o_n = geom[13], geom[14], geom[15]
        for t in range(cuda.grid(1), total, cuda.gridsize(1)):
            ow = t % ow_n
            oh = (t // ow_n) % oh_n
            o = (t // (ow_n * oh_n)) % o_n
            n = t // (ow_n * oh_n * o_n)
            g = o // og
            s = zero
            for c in range(cg):
                xbase = (n * c_in + g * cg + c) * h
                wbase = (o * cg + c) * kh
                for i in range(kh):
                    ih = oh * geom[7] - geom[11] + i * geom[9]
                    if 0 <= ih < h:
                        for j in range(kw):
                            iw = ow * geom[8] - geom[12] + j * geom[10]
                            if 0 <= iw < wd:
                                s += x[(xbase + ih) * wd + iw] * w[(wbase + i) * kw + j]
            out[t] = act(s + bias[o], p0, p1, p2, p3)

    return conv_direct


def choose_algorithm(cg: int, og: int, groups: int) -> str:
    """Depthwise-like filters (a group reads one channel, writes few) run direct; the rest implicit GEMM."""
    if FORCE_ALGORITHM is not None:
        return FORCE_ALGORITHM
    return "direct" if groups > 1 and cg == 1 and og <= 4 else "implicit-gemm"


@register_kernel("conv2d")
def lower_conv2d(ctx: LowerContext) -> LoweredOp:
    """Upload weights (transposed for the GEMM A tile) and bias (zeros when absent); pick the kernel."""
    require_nchw(ctx)
    op = ctx.node.op
    w = ctx.constant(1)
    o_ch, cg, kh, kw = w.shape
    groups = op.groups
    og, kk = o_ch // groups, cg * kh * kw
    b = ctx.constant(2)
    bias = ctx.upload(np.zeros(o_ch, dtype=ctx.dtype) if b is None else b)
    epilogue = epilogue_for(op.activation, ctx.dtype)
    algorithm = choose_algorithm(cg, og, groups)
    dtype_name = ctx.dtype.name
    static = (kh, kw, *op.strides, *op.dilations, op.pads[0], op.pads[2], cg, og, o_ch, kk)

    if algorithm == "direct":
        w_dev = ctx.upload(w)

        def prepare_direct(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
            n, c, h, wd = in_shapes[0]
            geom = (c, h, wd, out_shape[2], out_shape[3], *static)
            total = math.prod(out_shape)
            kernel = configure(_direct_kernel(dtype_name, epilogue.code), grid_1d(total), THREADS)

            def launch(inputs: Sequence, out, scratch):
                kernel(inputs[0], w_dev, bias, out, geom, total, *epilogue.params)
                return out

            return Prepared(launch)

        prepare = prepare_direct
    else:
        wt = ctx.upload(w.reshape(groups, og, kk).transpose(0, 2, 1))

        def prepare_gemm(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
            n, c, h, wd = in_shapes[0]
            oh, ow = out_shape[2], out_shape[3]
            geom = (c, h, wd, oh, ow, *static)
            cols = n * oh * ow
            tile = choose_tile(og)
            grid, _ = gemm_grid(og, cols, groups, 1, tile)
            splits = choose_splits(grid[0] * grid[1] * grid[2], kk, tile)
            chunk = split_chunk(kk, splits, tile)
            grid, block = gemm_grid(og, cols, groups, splits, tile)
            kernel = configure(make_gemm(_OPERANDS, tile, dtype_name, epilogue.code), grid, block)
            size = math.prod(out_shape)

            def launch(inputs: Sequence, out, scratch):
                target = out if splits == 1 else scratch  # split-K: partial sums, then the reduce's epilogue
                kernel(wt, inputs[0], bias, target, geom, og, cols, kk, splits, chunk, size, *epilogue.params)
                if splits > 1:
                    launch_reduce(dtype_name, scratch, out, bias, size, splits, oh * ow, o_ch, epilogue)
                return out

            return Prepared(launch, scratch=size * splits if splits > 1 else 0)

        prepare = prepare_gemm
    return LoweredOp(prepare=prepare,
                     description=f"conv2d[{algorithm}] {o_ch}x{cg}x{kh}x{kw} groups={groups}")
