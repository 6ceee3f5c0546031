"""The window and padding arithmetic of the windowed ops, for every rank: conv2d/conv3d and the 2-D/3-D pools.

Attribute tuples run over the spatial axes; pads and crops interleave (before, after) per axis (top, bottom,
left, right in 2-D; front, back, top, bottom, left, right in 3-D). ``ConvAttrs`` and ``PoolAttrs`` hold the
attribute checks and the shape rule of their family once; the op classes (``nn``, ``volume``) add their
fields, their layouts and their kind.
"""

from __future__ import annotations

from pydantic import field_validator, model_validator

from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq
from keydnn.ir.types import Dim, TensorType

__all__ = ["positive", "non_negative", "window_out", "window_out_sizes", "ConvAttrs", "PoolAttrs"]


def positive(values: tuple[int, ...], what: str) -> tuple[int, ...]:
    if any(v < 1 for v in values):
        raise ValueError(f"{what} must be >= 1, got {list(values)}")
    return values


def non_negative(values: tuple[int, ...], what: str) -> tuple[int, ...]:
    if any(p < 0 for p in values):
        raise ValueError(f"{what} must be >= 0, got {list(values)}")
    return values


def window_out(size: Dim, k: int, stride: int, dilation: int, before: int, after: int) -> Dim:
    """Output length of one axis of a window op (a symbolic size stays symbolic)."""
    if isinstance(size, str):
        return size
    span = dilation * (k - 1) + 1
    padded = size + before + after
    if padded < span:
        raise ShapeError(f"window of extent {span} does not fit in padded size {padded}")
    return (padded - span) // stride + 1


def window_out_sizes(sizes: tuple[Dim, ...], kernel: tuple, strides: tuple[int, ...], dilations: tuple[int, ...],
                     pads: tuple[int, ...]) -> tuple[Dim, ...]:
    """``window_out`` of every spatial axis; ``pads`` interleave (before, after) per axis."""
    return tuple(window_out(s, int(k), st, dl, pads[2 * a], pads[2 * a + 1])
                 for a, (s, k, st, dl) in enumerate(zip(sizes, kernel, strides, dilations)))


class ConvAttrs(OpBase):
    """What every convolution checks: positive strides and dilations, non-negative pads, groups >= 1, and
    its weight and bias against the input's channels."""

    @field_validator("strides", "dilations", check_fields=False)
    @classmethod
    def _strides_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return positive(v, "strides and dilations")

    @field_validator("pads", check_fields=False)
    @classmethod
    def _pads_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return non_negative(v, "pads")

    @field_validator("groups", check_fields=False)
    @classmethod
    def _groups_ok(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"groups must be >= 1, got {v}")
        return v

    def conv_out(self, channels: Dim, sizes: tuple[Dim, ...], inputs: list[TensorType], weight_doc: str
                 ) -> tuple[Dim, tuple[Dim, ...]]:
        """(output channels, output sizes) of ``inputs`` = [x, weight, bias?]; ``weight_doc`` names the
        weight's expected layout in the error, e.g. "(O, I/groups, KH, KW)"."""
        w = inputs[1]
        if w.rank != 2 + len(sizes):
            raise ShapeError(f"{self.kind} weight must be {2 + len(sizes)}-D {weight_doc}, got {w}")
        o, i = w.shape[0], w.shape[1]
        if not dim_eq(channels, i * self.groups if isinstance(i, int) else i):
            raise ShapeError(f"input has {channels} channels but weight expects {i} x {self.groups} groups")
        if isinstance(o, int) and o % self.groups:
            raise ShapeError(f"{o} output channels are not divisible by groups={self.groups}")
        if len(inputs) > 2 and inputs[2].shape != (o,):
            raise ShapeError(f"bias must have shape ({o},), got {inputs[2]}")
        return o, window_out_sizes(sizes, w.shape[2:], self.strides, self.dilations, self.pads)


class PoolAttrs(OpBase):
    """What every windowed pool checks (positive kernel and strides, pads smaller than the window) and its
    output sizes (dilation 1)."""

    @field_validator("kernel", "strides", check_fields=False)
    @classmethod
    def _sizes_ok(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        return positive(v, "kernel and strides")

    @model_validator(mode="after")
    def _pads_ok(self):
        if min(self.pads) < 0 or any(max(self.pads[2 * a], self.pads[2 * a + 1]) >= k
                                     for a, k in enumerate(self.kernel)):
            raise ValueError(f"pads {list(self.pads)} must be >= 0 and smaller than the window {list(self.kernel)}")
        return self

    def pool_out(self, sizes: tuple[Dim, ...]) -> tuple[Dim, ...]:
        return window_out_sizes(sizes, self.kernel, self.strides, (1,) * len(sizes), self.pads)
