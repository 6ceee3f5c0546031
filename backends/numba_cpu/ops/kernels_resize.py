"""Per-op kernels of ``dilate_pad2d`` (a strided copy into a zeroed buffer) and ``resize2d`` (separable
interpolation over per-axis tap tables, at most 4 taps per axis, built once per shape)."""

from __future__ import annotations

from typing import Optional, Sequence

import numba
import numpy as np
from numba import prange

from keydnn.backends.numba_cpu.ops.lowering import PARALLEL_JIT_OPTIONS, LowerContext, LoweredOp, register_kernel
from keydnn.ir.ops.resize import resize_taps

__all__ = ["resize_planes"]


def _nchw(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCHW" else x.transpose(0, 3, 1, 2)


@register_kernel("dilate_pad2d")
def lower_dilate_pad2d(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    (fh, fw), (top, _, left, _) = op.factors, op.pads

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x, y = _nchw(inputs[0], op.layout), _nchw(out, op.layout)
        h, w = x.shape[2], x.shape[3]
        out.fill(0)
        y[:, :, top: top + (h - 1) * fh + 1: fh, left: left + (w - 1) * fw + 1: fw] = x
        return out

    return LoweredOp(run=run, description=f"dilate_pad2d {list(op.factors)} {list(op.pads)}")


@numba.njit(**PARALLEL_JIT_OPTIONS)
def resize_planes(x, out, ih, wh, iw, ww):
    """out[p, o, q] = sum_a sum_b wh[o, a] * ww[q, b] * x[p, ih[o, a], iw[q, b]] over (planes, H, W) views."""
    planes, oh, ow = out.shape
    for p in prange(planes):
        for o in range(oh):
            for q in range(ow):
                s = 0.0
                for a in range(4):
                    wa = wh[o, a]
                    if wa == 0.0:
                        continue
                    for b in range(4):
                        wb = ww[q, b]
                        if wb != 0.0:
                            s += wa * wb * np.float64(x[p, ih[o, a], iw[q, b]])
                out[p, o, q] = s


@register_kernel("resize2d")
def lower_resize2d(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    tables: dict[tuple, tuple] = {}

    def run(inputs: Sequence[np.ndarray], out: Optional[np.ndarray]) -> np.ndarray:
        x = _nchw(inputs[0], op.layout)
        n, c, h, w = x.shape
        key = (h, w)
        if key not in tables:
            tables[key] = (*resize_taps(h, op.size[0], op.method, op.half_pixel),
                           *resize_taps(w, op.size[1], op.method, op.half_pixel))
        ih, wh, iw, ww = tables[key]
        xs = np.ascontiguousarray(x).reshape(n * c, h, w)
        if op.layout == "NCHW":
            resize_planes(xs, out.reshape(n * c, op.size[0], op.size[1]), ih, wh, iw, ww)
        else:
            tmp = np.empty((n * c, op.size[0], op.size[1]), dtype=out.dtype)
            resize_planes(xs, tmp, ih, wh, iw, ww)
            out[...] = tmp.reshape(n, c, op.size[0], op.size[1]).transpose(0, 2, 3, 1)
        return out

    return LoweredOp(run=run, description=f"resize2d {op.method} {list(op.size)}", work_per_element=16)
