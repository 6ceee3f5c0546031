"""Sequence ops: ``rnn`` (SimpleRNN / LSTM / GRU recurrences), ``embedding``, ``sequence_mask``,
``masking`` and ``repeat_vector``.

Sequences are batch-first ``(N, T, F)`` tensors whose time axis ``T`` may be
symbolic (a model converted once runs at any length). The time axis is not an
image axis: ``canonicalize-layout`` guards these ops (operands and results in
their Keras order), so it never moves ``T``.

An ``rnn`` node holds only the recurrence. Its first operand is the *input
projection* of every time step, ``x @ kernel + input_bias`` of shape
``(N, T, G*units)`` (``G`` gates), computed beforehand by one ``dense`` node:
one matrix product for all steps, so that the loop over time only does the
``h @ recurrent_kernel`` part. The gate blocks follow Keras's order
(``gate_order``): LSTM ``i, f, c, o``, GRU ``z, r, h``, SimpleRNN ``h``.

Operands: ``x`` (the projection), ``recurrent_kernel`` ``(units, G*units)``,
``recurrent_bias`` ``(G*units,)`` (GRU ``reset_after``'s second bias row;
zeros for the other cells, whose bias is in the projection), then, in this
order, the mask ``(N, T)`` when ``masked`` (1 = a real step, 0 = padding: a
padded step keeps the previous state, and its output is zero when
``zero_output_for_mask`` else the previous output) and ``initial_states``
initial states ``(N, units)`` (h, then c for an LSTM; zeros when absent).

An IR node has one result, so ``result`` says which one this node yields:
``output`` (the sequence ``(N, T, units)`` when ``return_sequences``, else
the last output ``(N, units)``), ``state_h`` or ``state_c``. A Keras layer
with ``return_state`` becomes one node per distinct result (each runs the
recurrence; the frontend reuses the output node for ``state_h`` where the two
are equal; a multi-result node is future work).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import field_validator, model_validator

from keydnn.ir.functions import ACTIVATION_NAMES
from keydnn.ir.ops.base import OpBase, ShapeError, dim_eq, dim_mul
from keydnn.ir.types import DType, TensorType

__all__ = ["Rnn", "Embedding", "SequenceMask", "Masking", "RepeatVector", "FoldTime", "UnfoldTime", "CELL_GATES",
           "CELL_ACTIVATIONS", "CELL_STATES"]

#: cell kind -> Keras's gate order (one letter per gate block of the kernels).
CELL_GATES: dict[str, str] = {"simple": "h", "lstm": "ifco", "gru": "zrh"}
#: cell kind -> how many state tensors it carries.
CELL_STATES: dict[str, int] = {"simple": 1, "lstm": 2, "gru": 1}

#: Activations a cell may use: the ``activation`` op's functions plus plain ``relu``.
CellActivation = Literal[("linear", "relu") + tuple(n for n in ACTIVATION_NAMES if n != "linear")]  # type: ignore[valid-type]
CELL_ACTIVATIONS: tuple[str, ...] = CellActivation.__args__  # type: ignore[attr-defined]


class Rnn(OpBase):
    """One recurrent layer's recurrence over a projected sequence (see the module docstring)."""

    kind: Literal["rnn"] = "rnn"
    cell: Literal["simple", "lstm", "gru"]
    units: int
    gate_order: str
    activation: CellActivation = "tanh"
    recurrent_activation: CellActivation = "sigmoid"
    reset_after: bool = False
    go_backwards: bool = False
    #: Write a backwards layer's sequence in input time order (what Bidirectional does), not processing order.
    restore_time_order: bool = False
    return_sequences: bool = False
    zero_output_for_mask: bool = False
    result: Literal["output", "state_h", "state_c"] = "output"
    masked: bool = False
    initial_states: int = 0

    operands: ClassVar[tuple[str, ...]] = ("x", "recurrent_kernel", "recurrent_bias", "extra*")
    constant_operands: ClassVar[tuple[str, ...]] = ("recurrent_kernel", "recurrent_bias")

    @field_validator("units")
    @classmethod
    def _units_ok(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"units must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "Rnn":
        if self.gate_order != CELL_GATES[self.cell]:
            raise ValueError(f"gate_order of a {self.cell} cell is {CELL_GATES[self.cell]!r}, got {self.gate_order!r}")
        if self.reset_after and self.cell != "gru":
            raise ValueError("reset_after applies to gru cells only")
        if self.initial_states not in (0, CELL_STATES[self.cell]):
            raise ValueError(f"a {self.cell} cell takes 0 or {CELL_STATES[self.cell]} initial states, "
                             f"got {self.initial_states}")
        if self.result == "state_c" and self.cell != "lstm":
            raise ValueError("result state_c exists for lstm cells only")
        if self.restore_time_order and not self.go_backwards:
            raise ValueError("restore_time_order applies to go_backwards recurrences only")
        return self

    @property
    def gates(self) -> int:
        return len(self.gate_order)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        expected = 3 + int(self.masked) + self.initial_states
        if len(inputs) != expected:
            raise ShapeError(f"rnn with masked={self.masked} and {self.initial_states} initial states takes "
                             f"{expected} operands, got {len(inputs)}")
        x, u, b = inputs[:3]
        g = self.gates * self.units
        if x.rank != 3 or not dim_eq(x.shape[2], g):
            raise ShapeError(f"rnn input must be the projection (N, T, {g}), got {x}")
        if u.shape != (self.units, g):
            raise ShapeError(f"recurrent_kernel must be ({self.units}, {g}), got {u}")
        if b.shape != (g,):
            raise ShapeError(f"recurrent_bias must be ({g},), got {b}")
        rest = inputs[3:]
        if self.masked:
            m = rest[0]
            if m.rank != 2 or not dim_eq(m.shape[0], x.shape[0]) or not dim_eq(m.shape[1], x.shape[1]):
                raise ShapeError(f"mask must be (N, T) = ({x.shape[0]}, {x.shape[1]}), got {m}")
            rest = rest[1:]
        for s in rest:
            if s.rank != 2 or not dim_eq(s.shape[0], x.shape[0]) or not dim_eq(s.shape[1], self.units):
                raise ShapeError(f"initial state must be (N, {self.units}), got {s}")
        if self.result == "output" and self.return_sequences:
            shape = (x.shape[0], x.shape[1], self.units)
        else:
            shape = (x.shape[0], self.units)
        return TensorType(shape=shape, dtype=x.dtype, layout="NC" if len(shape) == 2 else "ANY")


class Embedding(OpBase):
    """``table[x]``: a row of ``table`` (V, D) per index of ``x`` (any rank, integer or integral float).

    An index outside ``[0, V)`` is an error at run time (never a read outside the table); float indices
    are truncated toward zero, as Keras casts them to int32.
    """

    kind: Literal["embedding"] = "embedding"

    operands: ClassVar[tuple[str, ...]] = ("x", "table")
    constant_operands: ClassVar[tuple[str, ...]] = ("table",)

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x, table = inputs
        if x.rank < 1:
            raise ShapeError("embedding needs a batch axis")
        if table.rank != 2:
            raise ShapeError(f"embedding table must be 2-D (vocabulary, dim), got {table}")
        return TensorType(shape=x.shape + (table.shape[1],), dtype=table.dtype)


class SequenceMask(OpBase):
    """The Keras mask of a sequence, as 1.0 (real step) / 0.0 (padding), shape (N, T).

    Rank-2 ``x`` (token ids, ``Embedding(mask_zero=True)``): ``x != mask_value``. Rank-3 ``x``
    (features, ``Masking``): ``any(x != mask_value)`` over the last axis.
    """

    kind: Literal["sequence_mask"] = "sequence_mask"
    mask_value: float = 0.0
    dtype: DType = "float32"

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if x.rank not in (2, 3):
            raise ShapeError(f"sequence_mask takes (N, T) ids or (N, T, F) features, got {x}")
        return TensorType(shape=x.shape[:2], dtype=self.dtype)


class Masking(OpBase):
    """Keras ``Masking``: zero every time step whose features all equal ``mask_value``."""

    kind: Literal["masking"] = "masking"
    mask_value: float = 0.0

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if x.rank != 3:
            raise ShapeError(f"masking takes (N, T, F), got {x}")
        return x


class RepeatVector(OpBase):
    """Keras ``RepeatVector``: (N, F) -> (N, n, F)."""

    kind: Literal["repeat_vector"] = "repeat_vector"
    n: int

    @field_validator("n")
    @classmethod
    def _n_ok(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"n must be >= 1, got {v}")
        return v

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if x.rank != 2:
            raise ShapeError(f"repeat_vector takes (N, F), got {x}")
        return TensorType(shape=(x.shape[0], self.n, x.shape[1]), dtype=x.dtype)


class FoldTime(OpBase):
    """(N, T, ...) -> (N*T, ...): time steps become batch rows, so ``TimeDistributed`` runs any layer's ops
    unchanged on every step (a row-major view: no data moves)."""

    kind: Literal["fold_time"] = "fold_time"
    is_batch_view: ClassVar[bool] = True

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        if x.rank < 3:
            raise ShapeError(f"fold_time takes (N, T, ...), got {x}")
        return TensorType(shape=(dim_mul(x.shape[0], x.shape[1]),) + x.shape[2:], dtype=x.dtype)


class UnfoldTime(OpBase):
    """(N*T, ...) -> (N, T, ...), with N and T read off ``like`` (the sequence that was folded): the inverse
    of ``fold_time`` at any batch size and length (a view)."""

    kind: Literal["unfold_time"] = "unfold_time"
    is_batch_view: ClassVar[bool] = True

    operands: ClassVar[tuple[str, ...]] = ("x", "like")

    def infer(self, inputs: list[TensorType]) -> TensorType:
        x, like = inputs
        if x.rank < 1 or like.rank < 2:
            raise ShapeError(f"unfold_time takes (N*T, ...) and a (N, T, ...) sequence, got {x}, {like}")
        n, t = like.shape[0], like.shape[1]
        rows = x.shape[0]
        if isinstance(n, int) and isinstance(t, int) and isinstance(rows, int) and rows != n * t:
            raise ShapeError(f"unfold_time: {rows} rows are not {n} x {t} steps")
        return TensorType(shape=(n, t) + x.shape[1:], dtype=x.dtype)
