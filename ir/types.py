"""Tensor types of the IR: shape (with a symbolic batch), dtype and layout.

A type is data, never behaviour: it is frozen, hashable, prints the same way
every time and round-trips through JSON unchanged.
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

__all__ = ["Dim", "DType", "Layout", "TensorType", "Value", "DTYPES", "LAYOUTS"]

#: A dimension is a known size, or a symbol (the batch, ``"N"``).
Dim = Union[int, str]

#: Integer types appear only on integer-typed values (token ids feeding an ``embedding``).
DType = Literal["float32", "float64", "int32", "int64"]
DTYPES: tuple[str, ...] = ("float32", "float64", "int32", "int64")

#: How the axes of an activation are to be read. ``NC`` is a feature
#: vector, ``ANY`` a tensor whose axes carry no image meaning.
Layout = Literal["NCHW", "NHWC", "NCW", "NWC", "NC", "ANY", "NCDHW", "NDHWC"]
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC", "NCW", "NWC", "NC", "ANY", "NCDHW", "NDHWC")

_SHORT_DTYPE = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64"}


class TensorType(BaseModel):
    """Type of one value: its shape, element type and layout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shape: tuple[Dim, ...]
    dtype: DType = "float32"
    layout: Layout = "ANY"

    @field_validator("shape")
    @classmethod
    def _dims_valid(cls, shape: tuple[Dim, ...]) -> tuple[Dim, ...]:
        for d in shape:
            if isinstance(d, bool):
                raise ValueError(f"dimension {d!r} is a bool")
            if isinstance(d, int) and d < 0:
                raise ValueError(f"dimension {d} is negative")
            if isinstance(d, str) and not d.isidentifier():
                raise ValueError(f"symbolic dimension {d!r} is not an identifier")
        return shape

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def with_shape(self, shape: tuple[Dim, ...], layout: str | None = None) -> "TensorType":
        return TensorType(shape=tuple(shape), dtype=self.dtype, layout=layout or self.layout)

    def matches(self, concrete: tuple[int, ...]) -> bool:
        """Whether a concrete array shape is an instance of this type."""
        if len(concrete) != len(self.shape):
            return False
        return all(isinstance(d, str) or d == c for d, c in zip(self.shape, concrete))

    def __str__(self) -> str:
        dims = ",".join(str(d) for d in self.shape)
        text = f"{_SHORT_DTYPE[self.dtype]}[{dims}]"
        return text if self.layout == "ANY" else f"{text} {self.layout}"


class Value(BaseModel):
    """A named SSA value; its type is ``None`` until shapes are inferred."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: TensorType | None = None

    def __str__(self) -> str:
        return f"%{self.name}: {self.type}" if self.type is not None else f"%{self.name}: ?"
