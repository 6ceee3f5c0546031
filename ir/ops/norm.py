"""Per-channel affine ops: ``batch_norm`` (inference form) and ``scale_shift``.

``batch_norm`` is what BatchNormalization converts to; ``fold-batchnorm``
removes every one of them (into a neighbouring conv2d/dense, or down to a
``scale_shift``), so backends only ever need a ``scale_shift`` kernel.
Rescaling and Normalization lower straight to ``scale_shift``.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import field_validator

from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq, normalize_axis
from keydnn.ir.types import TensorType

__all__ = ["BatchNorm", "ScaleShift", "broadcast_compatible", "is_scalar_shape"]


def _per_channel(param: TensorType, what: str, x: TensorType, axis: int) -> None:
    if param.rank != 1 or not dim_eq(param.shape[0], x.shape[axis]):
        raise ShapeError(f"{what} must have shape ({x.shape[axis]},) for axis {axis} of {x}, got {param}")


def is_scalar_shape(shape: tuple) -> bool:
    """``()`` or ``(1,)``: one value for the whole tensor.

    ``(1,)`` counts because the weight store keeps 0-d arrays as 1-element
    1-D arrays (``np.ascontiguousarray`` returns at least 1-D).
    """
    return len(shape) == 0 or tuple(shape) == (1,)


def broadcast_compatible(param: tuple, sample: tuple) -> bool:
    """Whether ``param`` (a scalar, or the rank of ``sample``) broadcasts to ``sample`` without growing it."""
    if is_scalar_shape(param):
        return True
    if len(param) != len(sample):
        return False
    return all(p == 1 or dim_eq(p, s) for p, s in zip(param, sample))


class BatchNorm(OpBase):
    """Inference batch normalization along ``axis``.

    ``y = gamma * (x - mean) / sqrt(variance + epsilon) + beta``, where the four
    parameters are 1-D constants of length ``x.shape[axis]`` broadcast along
    ``axis`` (``axis`` counts the batch axis as 0 and may be negative; it is
    never the batch axis). ``gamma`` and ``beta`` are always materialized: a
    Keras layer with ``scale=False`` gives ``gamma = ones``, ``center=False``
    gives ``beta = zeros``, so every kernel sees one operand convention.
    """

    kind: Literal["batch_norm"] = "batch_norm"
    writes_in_place: ClassVar[bool] = True
    epsilon: float = 1e-3
    axis: int = 1

    operands: ClassVar[tuple[str, ...]] = ("x", "mean", "variance", "gamma", "beta")
    constant_operands: ClassVar[tuple[str, ...]] = ("mean", "variance", "gamma", "beta")

    @field_validator("epsilon")
    @classmethod
    def _eps_ok(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError(f"epsilon must be >= 0, got {v}")
        return v

    @field_validator("axis")
    @classmethod
    def _axis_ok(cls, v: int) -> int:
        if v == 0:
            raise ValueError("batch_norm cannot normalize along the batch axis 0")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        axis = normalize_axis(self.axis, x.rank)
        if axis == 0:
            raise ShapeError(f"axis {self.axis} is the batch axis of {x}")
        for what, param in zip(self.operands[1:], inputs[1:]):
            _per_channel(param, what, x, axis)
        return x


class ScaleShift(OpBase):
    """Affine map ``y = x * scale + shift`` with constant, broadcast parameters.

    Two forms, chosen by ``axis``:

    * ``axis`` set (per-channel form): ``scale`` and ``shift`` each have shape
      ``()`` (one scalar for the whole tensor) or ``(K,)`` with ``K`` equal to
      ``x.shape[axis]`` or 1, applied along ``axis`` (the batch axis is 0; it
      may be negative, never the batch axis). Folded BatchNorm and per-channel
      Normalization use this form.
    * ``axis=None`` (broadcast form): each parameter is a scalar (shape ``()``
      or ``(1,)``) or has rank ``x.rank - 1`` and broadcasts (NumPy rules,
      without growing) to ``x.shape[1:]``: the parameter is applied to every
      sample, in ``x``'s axis order. Rescaling (scalars) and Normalization over
      several axes use this form.

    A parameter of shape ``(1,)`` is always a scalar (the weight store keeps
    0-d arrays as ``(1,)``). The output has the type of ``x``.
    """

    kind: Literal["scale_shift"] = "scale_shift"
    writes_in_place: ClassVar[bool] = True
    axis: Optional[int] = 1

    operands: ClassVar[tuple[str, ...]] = ("x", "scale", "shift")
    constant_operands: ClassVar[tuple[str, ...]] = ("scale", "shift")

    @field_validator("axis")
    @classmethod
    def _axis_ok(cls, v: Optional[int]) -> Optional[int]:
        if v == 0:
            raise ValueError("scale_shift cannot apply parameters along the batch axis 0")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if x.rank < 1:
            raise ShapeError("scale_shift needs a batch axis")
        if self.axis is not None:
            axis = normalize_axis(self.axis, x.rank)
            if axis == 0:
                raise ShapeError(f"axis {self.axis} is the batch axis of {x}")
            for what, p in zip(("scale", "shift"), inputs[1:]):
                if p.rank == 0 or (p.rank == 1 and (p.shape[0] == 1 or dim_eq(p.shape[0], x.shape[axis]))):
                    continue
                raise ShapeError(f"{what} must have shape () or ({x.shape[axis]},) for axis {axis}, got {p}")
        else:
            for what, p in zip(("scale", "shift"), inputs[1:]):
                if not broadcast_compatible(p.shape, x.shape[1:]):
                    raise ShapeError(f"{what} {p} does not broadcast to the sample shape {list(x.shape[1:])}")
        return x
