"""``conv_lstm``: the recurrence of Keras's ConvLSTM2D / ConvLSTM1D, a convolution in place of the matrix
products (keras/src/layers/rnn/conv_lstm.py).

Like ``rnn``, the node holds only the recurrence: its first operand is the
input convolution of every step, ``(N, T, H, W, 4*filters)`` channels-last,
computed beforehand by one ``conv2d`` over time folded into the batch
(``fold_time`` / ``unfold_time``). The recurrent convolution is Keras's:
stride 1, ``'same'`` padding (TensorFlow's rule: the odd pixel after), kernel
``recurrent_kernel`` ``(kh, kw, filters, 4*filters)``; gates ``i, f, c, o``.
Operands after the recurrent kernel: the mask ``(N, T)`` when ``masked``, then
``initial_states`` states ``(N, H, W, filters)`` (h, c). ``result`` picks the
node's one result, as for ``rnn``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq
from keydnn.ir.ops.recurrent import CellActivation
from keydnn.ir.types import TensorType

__all__ = ["ConvLstm"]


class ConvLstm(OpBase):
    """One ConvLSTM layer's recurrence over its input convolution (see the module docstring)."""

    kind: Literal["conv_lstm"] = "conv_lstm"
    filters: int
    kernel: tuple[int, int]
    gate_order: Literal["ifco"] = "ifco"
    activation: CellActivation = "tanh"
    recurrent_activation: CellActivation = "sigmoid"
    go_backwards: bool = False
    return_sequences: bool = False
    zero_output_for_mask: bool = False
    result: Literal["output", "state_h", "state_c"] = "output"
    masked: bool = False
    initial_states: int = 0

    operands: ClassVar[tuple[str, ...]] = ("x", "recurrent_kernel", "extra*")
    constant_operands: ClassVar[tuple[str, ...]] = ("recurrent_kernel",)

    @field_validator("filters")
    @classmethod
    def _filters_ok(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"filters must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ConvLstm":
        if min(self.kernel) < 1:
            raise ValueError(f"kernel must be positive, got {list(self.kernel)}")
        if self.initial_states not in (0, 2):
            raise ValueError(f"a conv_lstm takes 0 or 2 initial states, got {self.initial_states}")
        return self

    def infer(self, inputs: list[TensorType]) -> TensorType:
        expected = 2 + int(self.masked) + self.initial_states
        if len(inputs) != expected:
            raise ShapeError(f"conv_lstm with masked={self.masked} and {self.initial_states} initial states takes "
                             f"{expected} operands, got {len(inputs)}")
        x, rk = inputs[:2]
        g = 4 * self.filters
        if x.rank != 5 or not dim_eq(x.shape[4], g):
            raise ShapeError(f"conv_lstm input must be the projection (N, T, H, W, {g}), got {x}")
        if rk.shape != (*self.kernel, self.filters, g):
            raise ShapeError(f"recurrent_kernel must be {(*self.kernel, self.filters, g)}, got {rk}")
        rest = inputs[2:]
        if self.masked:
            m = rest[0]
            if m.rank != 2 or not dim_eq(m.shape[1], x.shape[1]):
                raise ShapeError(f"mask must be (N, T), got {m}")
            rest = rest[1:]
        state = (x.shape[0], x.shape[2], x.shape[3], self.filters)
        for s in rest:
            if s.rank != 4 or not all(dim_eq(a, b) for a, b in zip(s.shape, state)):
                raise ShapeError(f"initial state must be {state}, got {s}")
        if self.result == "output" and self.return_sequences:
            shape = (x.shape[0], x.shape[1]) + state[1:]
        else:
            shape = state
        return TensorType(shape=shape, dtype=x.dtype, layout="NHWC" if len(shape) == 4 else "ANY")
