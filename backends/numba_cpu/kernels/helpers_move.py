"""Serial helpers of the generated code that move data or fold operands: pad, dilate, crop, upsample,
transpose, concat, and the elementwise merges (``merge_flat`` over broadcast operands, ``merge_span`` over
same-shape ones, with a fused activation). Flat arrays plus element offsets, one work item each, as in
``helpers`` (split from it to keep each module one concern).
"""

from __future__ import annotations

import logging

import numba
import numpy as np

from keydnn.backends.numba_cpu.codegen.codes import ADD, LINEAR, MAX, MIN, MUL, RELU0, SUB
from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.kernels.functions import apply_function
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS as JIT_OPTIONS
from keydnn.backends.numba_cpu.kernels.simd import (
    load_at, store_at, vadd, vload, vload_n, vmax_zero, vmul, vstore, vstore_n, vsub,
)

__all__ = ["pad_flat", "crop_flat", "upsample_flat", "dilate_flat", "combine", "transpose_flat", "merge_flat",
           "merge_span", "concat_rows"]

logger = logging.getLogger(__name__)

#: Lanes of the explicit vectors ``merge_span`` uses (the target's float32 vector).
_COPY_LANES = dw_lanes()


@numba.njit(**JIT_OPTIONS)
def combine(d, v, code):
    """The result of folding operand value ``v`` into accumulator ``d``."""
    if code == ADD:
        return d + v
    if code == SUB:
        return d - v
    if code == MUL:
        return d * v
    if code == MAX:
        return v if (v > d) | (v != v) else d
    if code == MIN:
        return v if (v < d) | (v != v) else d
    return v


@numba.njit(**JIT_OPTIONS)
def pad_flat(x, x_off, y, y_off, planes, H, WB, OH, OWB, top, left, value):
    """Each (H, W*B) plane placed at (top, left) of an (OH, OW*B) plane filled with ``value``."""
    for a in range(planes):
        xb = x_off + a * H * WB
        yb = y_off + a * OH * OWB
        for i in range(OH):
            row = yb + i * OWB
            si = i - top
            if si < 0 or si >= H:
                for j in range(OWB):
                    store_at(y, row + j, value)
                continue
            for j in range(left):
                store_at(y, row + j, value)
            src = xb + si * WB
            for j in range(WB):
                store_at(y, row + left + j, load_at(x, src + j))
            for j in range(left + WB, OWB):
                store_at(y, row + j, value)


@numba.njit(**JIT_OPTIONS)
def dilate_flat(x, x_off, y, y_off, planes, H, W, B, OH, OW, fh, fw, top, left):
    """Each (H, W, B) plane stuffed into a zeroed (OH, OW, B) plane: pixel (i, j) lands at
    (top + i * fh, left + j * fw) (a transposed convolution's input, issue 18's dilate_pad2d)."""
    for a in range(planes):
        xb = x_off + a * H * W * B
        yb = y_off + a * OH * OW * B
        for k in range(OH * OW * B):
            store_at(y, yb + k, 0.0)
        for i in range(H):
            for j in range(W):
                src = xb + (i * W + j) * B
                dst = yb + ((top + i * fh) * OW + left + j * fw) * B
                for k in range(B):
                    store_at(y, dst + k, load_at(x, src + k))


@numba.njit(**JIT_OPTIONS)
def crop_flat(x, x_off, y, y_off, planes, H, WB, OH, OWB, top, left):
    for a in range(planes):
        xb = x_off + a * H * WB
        yb = y_off + a * OH * OWB
        for i in range(OH):
            src = xb + (top + i) * WB + left
            dst = yb + i * OWB
            for j in range(OWB):
                store_at(y, dst + j, load_at(x, src + j))


@numba.njit(**JIT_OPTIONS)
def upsample_flat(x, x_off, y, y_off, planes, H, W, B, fh, fw):
    """Nearest repeat of (H, W, B) planes by (fh, fw)."""
    OW = W * fw
    for a in range(planes):
        xb = x_off + a * H * W * B
        yb = y_off + a * H * fh * OW * B
        for i in range(H):
            for r in range(fh):
                dst = yb + (i * fh + r) * OW * B
                for j in range(W):
                    src = xb + (i * W + j) * B
                    for f in range(fw):
                        d = dst + (j * fw + f) * B
                        for k in range(B):
                            store_at(y, d + k, load_at(x, src + k))


@numba.njit(**JIT_OPTIONS)
def _rows(T, dims_off, rank):
    """(innermost extent, number of innermost rows) of the shape load_at(T, dims_off:dims_off+rank)."""
    inner = load_at(T, dims_off + rank - 1)
    total = 1
    for k in range(rank):
        total *= load_at(T, dims_off + k)
    return inner, (total // inner if inner else 0)


@numba.njit(**JIT_OPTIONS)
def _row_offset(T, dims_off, strides_off, rank, t):
    """Element offset of innermost row ``t`` (C order over the dims) under the strides at strides_off."""
    rem = t
    src = 0
    for k in range(rank - 2, -1, -1):
        d = load_at(T, dims_off + k)
        src += (rem % d) * load_at(T, strides_off + k)
        rem //= d
    return src


@numba.njit(**JIT_OPTIONS)
def transpose_flat(x, x_off, y, y_off, T, shape_off, stride_off, rank, r_lo, r_hi):
    """Rows r_lo..r_hi (innermost runs) of y (C order, shape load_at(T, shape_off:shape_off+rank)) = x gathered
    with input strides load_at(T, stride_off:...); r_hi is clipped to the row count."""
    inner, rows = _rows(T, shape_off, rank)
    step = load_at(T, stride_off + rank - 1)
    for t in range(r_lo, min(r_hi, rows)):
        src = _row_offset(T, shape_off, stride_off, rank, t)
        base = y_off + t * inner
        for j in range(inner):
            store_at(y, base + j, load_at(x, x_off + src + j * step))


@numba.njit(**JIT_OPTIONS)
def merge_flat(x, x_off, y, y_off, T, dims_off, strides_off, rank, code, scale):
    """Fold operand x (broadcast with strides load_at(T, strides_off:...) over collapsed dims load_at(T, dims_off:...))
    into y; code 0 copies. ``scale`` multiplies the result (avg's 1/n on the last operand)."""
    inner, rows = _rows(T, dims_off, rank)
    step = load_at(T, strides_off + rank - 1)
    for t in range(rows):
        src = x_off + _row_offset(T, dims_off, strides_off, rank, t)
        base = y_off + t * inner
        if step == 1:
            for j in range(inner):
                store_at(y, base + j, combine(load_at(y, base + j), load_at(x, src + j), code) * scale)
        else:
            v = load_at(x, src)
            for j in range(inner):
                store_at(y, base + j, combine(load_at(y, base + j), v, code) * scale)


@numba.njit(**JIT_OPTIONS)
def _merge_vec(a, b, code):
    if code == ADD:
        return vadd(a, b)
    if code == SUB:
        return vsub(a, b)
    if code == MUL:
        return vmul(a, b)
    return b


@numba.njit(**JIT_OPTIONS)
def merge_span(x, x_off, y, y_off, n, code, scale, act, p0, p1, p2, p3):
    """y[i] = act(combine(y[i], x[i], code) * scale) for i < n: one operand of an elementwise merge whose
    operands all have the result's shape, with the merge's fused activation on the last operand (``act``
    LINEAR otherwise). Copy, add, sub and mul without scale under relu or nothing run in explicit vectors
    (x and y may be one array, so LLVM would not vectorize the loop itself); the rest element by element."""
    if scale == 1.0 and code <= MUL and (act == LINEAR or act == RELU0):
        j = 0
        while j + _COPY_LANES <= n:
            v = _merge_vec(vload(y, y_off + j, _COPY_LANES), vload(x, x_off + j, _COPY_LANES), code)
            if act == RELU0:
                v = vmax_zero(v)
            vstore(y, y_off + j, v)
            j += _COPY_LANES
        if j < n:
            m = n - j
            v = _merge_vec(vload_n(y, y_off + j, m, _COPY_LANES), vload_n(x, x_off + j, m, _COPY_LANES), code)
            if act == RELU0:
                v = vmax_zero(v)
            vstore_n(y, y_off + j, v, m)
        return
    for i in range(n):
        v = combine(load_at(y, y_off + i), load_at(x, x_off + i), code) * scale
        if act != LINEAR:
            v = apply_function(np.float64(v), act, p0, p1, p2, p3)
        store_at(y, y_off + i, v)


@numba.njit(**JIT_OPTIONS)
def concat_rows(x, x_off, y, y_off, outer, part, row, offset):
    """y rows of ``row`` elements get x's rows of ``part`` elements at column ``offset``."""
    for o in range(outer):
        src = x_off + o * part
        dst = y_off + o * row + offset
        for j in range(part):
            store_at(y, dst + j, load_at(x, src + j))
