"""The base of every IR op: typed attributes plus a shape rule.

An op is an immutable pydantic model. Its class declares its operands by name
(``operands``; a trailing ``?`` marks an optional one, a last name ending in
``*`` any number of further ones: ``("x", "y", "xs*")`` takes two or more) and implements
``infer`` — the single shape rule for the op, used by the ``infer-shapes``
pass and re-checked by the verifier.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from keydnn.ir.types import Dim, TensorType

__all__ = ["OpBase", "ShapeError", "normalize_axis", "dim_mul", "dim_eq"]


class ShapeError(ValueError):
    """Operand types that an op's shape rule rejects."""


def normalize_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ShapeError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def dim_mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    return f"{a}x{b}".replace("-", "_") if not (a == 1 or b == 1) else (b if a == 1 else a)


def dim_eq(a: Dim, b: Dim) -> bool:
    """Equal, or not provably different (two symbols may agree)."""
    return a == b or isinstance(a, str) or isinstance(b, str)


class OpBase(BaseModel):
    """Common behaviour of ops; subclasses add a ``kind`` literal and attributes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Operand names in order; ``"bias?"`` marks an optional trailing operand, a last ``"xs*"``
    #: any number of further operands (a variadic op).
    operands: ClassVar[tuple[str, ...]] = ("x",)
    #: Operands that must be graph constants (weights), by name.
    constant_operands: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def arity(cls) -> tuple[int, int | None]:
        """(fewest, most) operands; most is ``None`` for a variadic op."""
        required = sum(1 for o in cls.operands if not o.endswith(("?", "*")))
        variadic = bool(cls.operands) and cls.operands[-1].endswith("*")
        return required, None if variadic else len(cls.operands)

    @classmethod
    def operand_name(cls, position: int) -> str:
        """Name of the operand at ``position`` (markers stripped); ``"?"`` past the last one."""
        if position < len(cls.operands):
            return cls.operands[position].rstrip("?*")
        if cls.operands and cls.operands[-1].endswith("*"):
            return cls.operands[-1].rstrip("*")
        return "?"

    def infer(self, inputs: list[TensorType]) -> TensorType:  # pragma: no cover - abstract
        raise NotImplementedError

    def attrs(self) -> dict:
        """Attributes in declaration order (what the printer shows)."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k != "kind"}
