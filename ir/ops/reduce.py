"""Ops that reduce over a set of axes: ``layer_norm`` (the normalizing layers) and ``reduce`` (mean/sum/max/min).

Both take ``axes`` that count the batch axis as 0 (never reduced) and may be
any non-empty set of the other axes, contiguous or not, so that a layout
pass can permute the tensor and only remap the axes. Backends run both from
the same two index tables (``reduction_tables``): the flat offset of every
*lane* (one output position: an index over the kept axes) and the offset of
every reduced element relative to its lane, so one kernel serves every axis
set and layout.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import field_validator

from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq, normalize_axis
from keydnn.ir.types import TensorType

__all__ = ["LayerNorm", "Reduce", "reduction_tables", "norm_axes"]


def norm_axes(axes: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """``axes`` made non-negative and sorted; the batch axis and repeats are refused."""
    out = sorted({normalize_axis(a, rank) for a in axes})
    if not out or 0 in out or len(out) != len(axes):
        raise ShapeError(f"axes {list(axes)} must be distinct non-batch axes of a rank-{rank} tensor")
    return tuple(out)


def reduction_tables(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(lane_base, red_off): flat offsets of each lane's first element (kept axes, C order) and of each
    reduced element (reduced axes, C order) relative to it, for a C-contiguous tensor of ``shape``."""
    rank = len(shape)
    strides = [math.prod(shape[i + 1:]) for i in range(rank)]
    kept = [i for i in range(rank) if i not in axes]

    def offsets(which: list[int]) -> np.ndarray:
        off = np.zeros([shape[i] for i in which] or [1], dtype=np.int64) if which else np.zeros(1, np.int64)
        for k, i in enumerate(which):
            idx = np.arange(shape[i], dtype=np.int64) * strides[i]
            off = off + idx.reshape([-1 if j == k else 1 for j in range(len(which))])
        return np.ascontiguousarray(off.reshape(-1))

    return offsets(kept), offsets(list(axes))


def _params_ok(param: TensorType, what: str, x: TensorType, axes: tuple[int, ...]) -> None:
    sample = x.shape[1:]
    if param.shape in ((), (1,)):
        return
    if param.rank != len(sample):
        raise ShapeError(f"{what} {param} must be a scalar or have the sample rank {len(sample)} of {x}")
    for i, (p, s) in enumerate(zip(param.shape, sample)):
        if p != 1 and (i + 1 not in axes or not dim_eq(p, s)):
            raise ShapeError(f"{what} {param} must vary only along the normalized axes {list(axes)} of {x}")



def _check_axes(v: tuple[int, ...]) -> tuple[int, ...]:
    """Reduction axes: distinct, at least one, never the batch axis 0."""
    if not v or 0 in v or len(set(v)) != len(v):
        raise ValueError(f"axes must be distinct, non-empty and never the batch axis 0, got {list(v)}")
    return v

class LayerNorm(OpBase):
    """``y = (x - mean) * rsqrt(stat + epsilon) * gamma + beta`` over ``axes``, per lane.

    * ``center``: subtract the lane's mean from ``x`` (LayerNormalization);
      off for the RMS forms, which only scale.
    * ``statistic``: ``variance`` (mean of squared deviations), ``mean_square``
      (RMSNormalization) or ``sum_square`` (UnitNormalization's squared L2 norm).
    * ``eps_mode``: ``add`` (``stat + epsilon``) or ``max`` (``max(stat, epsilon)``:
      UnitNormalization's floor on the norm).

    ``gamma`` and ``beta`` are always present (ones / zeros when the layer has
    none), scalars or of the sample's rank with size 1 on every axis that is
    not normalized, in ``x``'s axis order (a layout pass permutes them with ``x``).
    """

    kind: Literal["layer_norm"] = "layer_norm"
    axes: tuple[int, ...] = (-1,)
    epsilon: float = 1e-3
    center: bool = True
    statistic: Literal["variance", "mean_square", "sum_square"] = "variance"
    eps_mode: Literal["add", "max"] = "add"

    operands: ClassVar[tuple[str, ...]] = ("x", "gamma", "beta")
    constant_operands: ClassVar[tuple[str, ...]] = ("gamma", "beta")

    @field_validator("epsilon")
    @classmethod
    def _eps_ok(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError(f"epsilon must be >= 0, got {v}")
        return v

    @field_validator("axes")
    @classmethod
    def _axes_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return _check_axes(v)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        axes = norm_axes(self.axes, x.rank)
        for what, p in zip(("gamma", "beta"), inputs[1:]):
            _params_ok(p, what, x, axes)
        return x


class Reduce(OpBase):
    """``mean``, ``sum``, ``max`` or ``min`` of ``x`` over ``axes`` (never the batch axis).

    ``keepdims`` keeps the reduced axes with size 1 (Keras's ``keepdims``).
    """

    kind: Literal["reduce"] = "reduce"
    mode: Literal["mean", "sum", "max", "min"]
    axes: tuple[int, ...]
    keepdims: bool = False

    @field_validator("axes")
    @classmethod
    def _axes_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return _check_axes(v)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        axes = norm_axes(self.axes, x.rank)
        if self.keepdims:
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        else:
            shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return TensorType(shape=shape, dtype=x.dtype)
