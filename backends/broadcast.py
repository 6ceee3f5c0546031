"""Shape arithmetic shared by the broadcasting kernels (affine, prelu, merge ops).

Two views cover every broadcast the IR allows:

* a *parameter view* ``(outer, period, inner)``: a constant that varies only
  along a contiguous block of axes is one flat vector of ``period`` values,
  read as ``param[c]`` for element ``(o, c, i)`` (per-channel scale/shift:
  ``period`` channels, ``inner`` pixels; a per-sample tensor: ``inner == 1``);
* *collapsed strides* for merge operands: adjacent axes along which every
  operand is either fully present or fully broadcast merge into one, so a
  (N, C, H, W) + (N, C, 1, 1) add becomes a rank-3 loop with a unit-stride
  inner axis.

Pure NumPy and integers: used at lowering time and by the code generator, by
the numba-cpu and the numba-cuda backends alike (neither imports the other).
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["ParamView", "param_view", "collapse_broadcast", "broadcast_shape", "broadcast_strides", "bias_lane_table"]

logger = logging.getLogger(__name__)


class ParamView:
    """Constants laid out for the ``(outer, period, inner)`` view of a tensor of a given shape."""

    __slots__ = ("lo", "hi", "params")

    def __init__(self, lo: int, hi: int, params: list[np.ndarray]) -> None:
        self.lo, self.hi, self.params = lo, hi, params

    def dims(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """(outer, period, inner) of a concrete tensor shape."""
        return (math.prod(shape[: self.lo]), math.prod(shape[self.lo: self.hi]), math.prod(shape[self.hi:]))

    @property
    def period(self) -> int:
        return self.params[0].size


def param_view(params: Sequence[np.ndarray], sample: Sequence[int], axis: Optional[int], dtype=np.float64) -> ParamView:
    """Lay out constants that broadcast against a tensor whose non-batch shape is ``sample``.

    ``axis`` (counting the batch axis as 0) gives the per-channel form: each
    parameter is a scalar or a vector along that axis. ``axis=None`` gives the
    per-sample form: a scalar or an array of ``len(sample)`` axes that
    broadcasts to ``sample``. Scalars and size-1 arrays are one value. Every
    parameter comes back flat, of one common length, in ``dtype``.
    """
    rank = len(sample) + 1
    arrays = [np.asarray(p, dtype=dtype) for p in params]
    if all(a.size == 1 for a in arrays):
        return ParamView(rank, rank, [a.reshape(1) for a in arrays])
    if axis is not None:
        channels = max(a.size for a in arrays)
        return ParamView(axis, axis + 1, [np.ascontiguousarray(np.broadcast_to(a.reshape(-1), (channels,)))
                                          for a in arrays])
    shaped = [a.reshape(()) if a.size == 1 else a for a in arrays]
    varying = [k for a in shaped if a.ndim for k, d in enumerate(a.shape) if d != 1]
    lo, hi = min(varying), max(varying) + 1
    block = tuple(sample[lo:hi])
    flat = []
    for a in shaped:
        part = a if a.ndim == 0 else a[(0,) * lo + (slice(None),) * (hi - lo) + (0,) * (len(sample) - hi)]
        flat.append(np.ascontiguousarray(np.broadcast_to(part, block)).reshape(-1))
    return ParamView(lo + 1, hi + 1, flat)


def broadcast_shape(shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """NumPy broadcasting of equal-rank concrete shapes."""
    return tuple(max(dims) if min(dims) > 0 else 0 for dims in zip(*shapes))


def collapse_broadcast(out_shape: Sequence[int], shapes: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent axes where every operand's broadcast pattern agrees.

    Returns the collapsed output shape and, per operand, its element strides on
    those axes (0 where the operand is broadcast). Size-1 output axes vanish.
    """
    rank = len(out_shape)
    keep = [k for k in range(rank) if out_shape[k] != 1]
    if not keep:
        return [1], [[0] for _ in shapes]
    dims: list[int] = []
    present: list[list[bool]] = [[] for _ in shapes]
    for k in keep:
        here = [s[k] != 1 for s in shapes]
        if dims and all(p[-1] == h for p, h in zip(present, here)):
            dims[-1] *= out_shape[k]
            continue
        dims.append(out_shape[k])
        for p, h in zip(present, here):
            p.append(h)
    strides = []
    for p in present:
        st, acc = [0] * len(dims), 1
        for k in range(len(dims) - 1, -1, -1):
            if p[k]:
                st[k] = acc
                acc *= dims[k]
        strides.append(st)
    return dims, strides


def broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> np.ndarray:
    """Element strides of a C-contiguous ``shape`` seen through a broadcast to ``out`` (0 where it repeats)."""
    full = (1,) * (len(out) - len(shape)) + tuple(shape)
    strides = [math.prod(full[i + 1:]) for i in range(len(full))]
    return np.array([0 if d == 1 and o != 1 else s for d, o, s in zip(full, out, strides)], dtype=np.int64)


def bias_lane_table(x_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> tuple[np.ndarray, int]:
    """For each lane (all axes but the last) of ``x``, the offset of its row of the broadcast bias, and the
    bias's step along the last axis (0 when it is broadcast there)."""
    strides = broadcast_strides(b_shape, x_shape)
    lead = x_shape[:-1]
    idx = np.indices(lead).reshape(len(lead), -1) if lead else np.zeros((0, 1), dtype=np.int64)
    base = (strides[:-1, None] * idx).sum(axis=0) if lead else np.zeros(1, dtype=np.int64)
    return np.ascontiguousarray(base, dtype=np.int64), int(strides[-1])
