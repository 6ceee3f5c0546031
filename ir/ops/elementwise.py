"""Elementwise and normalizing activations: relu family, prelu, softmax, named functions."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import field_validator

from keydnn.ir.functions import ACTIVATION_FUNCTIONS, ACTIVATION_NAMES
from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq, normalize_axis
from keydnn.ir.types import TensorType

__all__ = ["Relu", "PRelu", "Softmax", "Activation", "ACTIVATION_FUNCTIONS"]


class Relu(OpBase):
    """Keras ReLU: ``x * (x > threshold)``, clipped to ``[0, max_value]`` only when max_value is set,
    minus ``negative_slope * relu(threshold - x)`` (keras.activations.relu, both Keras 2 and 3)."""

    kind: Literal["relu"] = "relu"
    is_activation: ClassVar[bool] = True
    writes_in_place: ClassVar[bool] = True
    max_value: Optional[float] = None
    negative_slope: float = 0.0
    threshold: float = 0.0

    @field_validator("max_value")
    @classmethod
    def _max_ok(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not v >= 0:
            raise ValueError(f"max_value must be >= 0, got {v}")
        return v

    @field_validator("negative_slope")
    @classmethod
    def _slope_ok(cls, v: float) -> float:
        if not v >= 0:
            raise ValueError(f"negative_slope must be >= 0, got {v}")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        return inputs[0]


class PRelu(OpBase):
    """Keras PReLU: ``y = max(x, 0) + alpha * min(x, 0)`` with a learned constant ``alpha``.

    ``alpha`` is a scalar (shape ``()`` or ``(1,)``) or has the rank of one sample
    (``x.rank - 1``) and broadcasts over ``x.shape[1:]`` without growing it: Keras stores it with the
    sample's shape, with size 1 on its ``shared_axes``. It is laid out in the
    same axis order as ``x`` (so ``canonicalize-layout`` permutes it with ``x``).
    """

    kind: Literal["prelu"] = "prelu"
    writes_in_place: ClassVar[bool] = True

    operands: ClassVar[tuple[str, ...]] = ("x", "alpha")
    constant_operands: ClassVar[tuple[str, ...]] = ("alpha",)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x, alpha = inputs[0], inputs[1]
        sample = x.shape[1:]
        ok = alpha.shape in ((), (1,)) or (
            alpha.rank == len(sample) and all(a == 1 or dim_eq(a, s) for a, s in zip(alpha.shape, sample))
        )
        if not ok:
            raise ShapeError(f"prelu alpha {alpha} does not broadcast to the sample shape {list(sample)}")
        return x


class Softmax(OpBase):
    """Softmax along one axis, computed with the max subtracted for stability."""

    kind: Literal["softmax"] = "softmax"
    writes_in_place: ClassVar[bool] = True
    axis: int = -1

    def infer(self, inputs: list[TensorType]) -> TensorType:
        normalize_axis(self.axis, inputs[0].rank)
        return inputs[0]


#: The ``activation`` op's functions come from the one table of scalar functions (``keydnn.ir.functions``).
ActivationFunction = Literal[ACTIVATION_NAMES]  # type: ignore[valid-type]


class Activation(OpBase):
    """A named elementwise function; ``alpha`` parameterizes elu."""

    kind: Literal["activation"] = "activation"
    is_activation: ClassVar[bool] = True
    writes_in_place: ClassVar[bool] = True
    function: ActivationFunction
    alpha: float = 1.0

    operands: ClassVar[tuple[str, ...]] = ("x",)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        return inputs[0]
