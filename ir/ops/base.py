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

    # -- traits: what passes and backends ask of an op, instead of each keeping its own list of kinds --
    #: The result is the operand's storage under another shape: no element moves (flatten, reshape, ...).
    is_view: ClassVar[bool] = False
    #: The result is the operand's storage with an axis moved into or out of the batch axis (fold_time,
    #: unfold_time): no element moves, but the ops after it see another number of batch rows.
    is_batch_view: ClassVar[bool] = False
    #: The op computes nothing and its ``layout`` attribute only names its result's layout (reshape,
    #: expand_dims, squeeze, transpose): it may carry a channels_last layout in a channels-first graph.
    layout_is_result_only: ClassVar[bool] = False
    #: A multi-operand op of DAGs (add, concat, ...); ``is_elementwise_merge``: one that combines
    #: operands element by element with broadcasting (every merge but concat).
    is_merge: ClassVar[bool] = False
    is_elementwise_merge: ClassVar[bool] = False
    #: An elementwise activation (relu, activation) that conv/dense can absorb as a fused epilogue,
    #: that a merge's last pass can apply, and that commutes with flatten.
    is_activation: ClassVar[bool] = False
    #: conv2d/dense: takes a fused activation epilogue and absorbs an affine (batch norm) on its output.
    accepts_epilogue: ClassVar[bool] = False
    #: Elementwise over its first operand, so it may write its result over that operand when it is dead.
    writes_in_place: ClassVar[bool] = False

    _registry: ClassVar[dict[str, type["OpBase"]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        """Register every op class that declares a ``kind`` literal by its kind (a subclass that inherits one is
        a variant, not a new op): the op union,
        ``OP_CLASSES`` and the trait tables are derived from this registry, never listed by hand."""
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("kind")
        if "kind" in cls.__dict__.get("__annotations__", {}) and field is not None and isinstance(field.default, str):
            other = OpBase._registry.get(field.default)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise TypeError(f"op kind {field.default!r} is declared by both {other.__qualname__} and "
                                f"{cls.__qualname__}")
            OpBase._registry[field.default] = cls

    @staticmethod
    def registered() -> dict[str, type["OpBase"]]:
        """kind -> op class, for every op class defined so far, sorted by kind."""
        return dict(sorted(OpBase._registry.items()))

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
