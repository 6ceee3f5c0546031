"""Sequence ops on numba-cuda (the recurrence of every cell kind, masks, initial states, directions, embedding
with its bounds check, masking, repeat_vector), against the reference interpreter and numba-cpu, at two
sequence lengths from one compiled graph."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import (  # noqa: F401  (fast_simulator: autouse fixture)
    assert_parity, compile_cuda, fast_simulator, seeded, skip_without_cuda,
)
from passes.builders import GraphBuilder

from keydnn.ir import Graph
from keydnn.ir.ops import Dense
from keydnn.ir.ops.recurrent import CELL_GATES, Embedding, Masking, RepeatVector, Rnn, SequenceMask
from keydnn.ir.types import TensorType, Value

skip_without_cuda()

CASES = [
    dict(cell="simple", activation="relu"),
    dict(cell="lstm"),
    dict(cell="lstm", go_backwards=True, restore_time_order=True, return_sequences=True, zero_output_for_mask=True),
    dict(cell="lstm", result="state_c", initial_states=2),
    dict(cell="gru", reset_after=True, return_sequences=True),
    dict(cell="gru", reset_after=False, result="state_h", initial_states=1),
]


def _graph(case: dict, masked: bool) -> Graph:
    b = GraphBuilder("rnn", seed=1)
    units, feats = 5, 3
    g = len(CELL_GATES[case["cell"]]) * units
    x = b.input("x", ("N", "T", feats))
    proj = b.add(Dense(), x, b.rand("w", (feats, g), 0.5), b.rand("b", (g,), 0.1))
    extra = []
    if masked:
        extra.append(b.input("m", ("N", "T")))
    for k in range(case.get("initial_states", 0)):
        extra.append(b.input(f"s{k}", ("N", units)))
    op = Rnn(units=units, gate_order=CELL_GATES[case["cell"]], masked=masked, **case)
    out = b.add(op, proj, b.rand("u", (units, g), 0.5), b.rand("rb", (g,), 0.1), *extra, name="rnn")
    return b.build(out)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_rnn_matches_reference_at_two_lengths(case, masked) -> None:
    graph = _graph(case, masked)
    rng = seeded()
    for steps in (4, 7):
        feed = [rng.standard_normal((3, steps, 3)).astype("float32")]
        if masked:
            m = np.ones((3, steps), "float32")
            m[0, steps // 2:] = 0
            m[1, :] = 0
            feed.append(m)
        feed += [rng.standard_normal((3, 5)).astype("float32") for _ in range(case.get("initial_states", 0))]
        assert_parity(graph, *feed, atol=1e-5)


def _ids_graph() -> Graph:
    b = GraphBuilder("emb", seed=2)
    b.inputs.append(Value(name="ids", type=TensorType(shape=("N", "T"), dtype="int32")))
    b.types["ids"] = b.inputs[-1].type
    e = b.add(Embedding(), "ids", b.rand("table", (10, 4)), name="emb")
    m = b.add(SequenceMask(), "ids", name="mask")
    masked = b.add(Masking(mask_value=0.0), e, name="masking")
    rep = b.add(RepeatVector(n=3), b.add(SequenceMask(mask_value=0.5), masked, name="mask2"), name="rep")
    return b.build(e, m, masked, rep)


def test_embedding_mask_ops() -> None:
    graph = _ids_graph()
    ids = np.array([[1, 0, 9, 3], [0, 0, 0, 0]], dtype="int32")
    assert_parity(graph, ids, atol=1e-6)
    with pytest.raises(ValueError, match="outside the table"):
        compile_cuda(graph)(np.array([[1, 10]], dtype="int32"))


def test_fold_and_unfold_time() -> None:
    from keydnn.ir.ops import Activation
    from keydnn.ir.ops.recurrent import FoldTime, UnfoldTime

    b = GraphBuilder("td", seed=3)
    x = b.input("x", ("N", "T", 4))
    folded = b.add(FoldTime(), x, name="fold")
    y = b.add(Activation(function="tanh"), b.add(Dense(), folded, b.rand("w", (4, 2)), name="dense"), name="act")
    graph = b.build(b.add(UnfoldTime(), y, x, name="unfold"))
    rng = seeded()
    for steps in (3, 6):
        assert_parity(graph, rng.standard_normal((2, steps, 4)).astype("float32"), atol=1e-5)


@pytest.mark.parametrize("case", [
    dict(),
    dict(go_backwards=True, return_sequences=True, masked=True, zero_output_for_mask=True),
    dict(result="state_c", initial_states=2, masked=True),
], ids=["last", "backwards-seq-masked", "state_c-init"])
def test_conv_lstm(case) -> None:
    from keydnn.ir.ops.conv_recurrent import ConvLstm

    b = GraphBuilder("clstm", seed=4)
    x = b.input("x", ("N", "T", 4, 3, 8))
    extra = [b.input("m", ("N", "T"))] if case.get("masked") else []
    extra += [b.input(f"s{k}", ("N", 4, 3, 2)) for k in range(case.get("initial_states", 0))]
    op = ConvLstm(filters=2, kernel=(3, 2), **case)
    graph = b.build(b.add(op, x, b.rand("rk", (3, 2, 2, 8), 0.5), *extra, name="clstm"))
    rng = seeded()
    for steps in (3, 5):
        feed = [rng.standard_normal((2, steps, 4, 3, 8)).astype("float32")]
        if case.get("masked"):
            m = np.ones((2, steps), "float32")
            m[0, 1:] = 0
            feed.append(m)
        feed += [rng.standard_normal((2, 4, 3, 2)).astype("float32") for _ in range(case.get("initial_states", 0))]
        assert_parity(graph, *feed, atol=1e-5)
