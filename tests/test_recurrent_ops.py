"""The sequence ops without Keras: shape rules and verifier, JSON round trip, printer, and numba-cpu against
the reference interpreter for every cell form, masked or not, with initial states, batches that span several
row blocks of the kernel, and several lengths through one compiled graph."""

from __future__ import annotations

import numpy as np
import pytest
from passes.builders import GraphBuilder

from keydnn.backends.numba_cpu import compile_graph
from keydnn.errors import IRError
from keydnn.ir import Graph, run_reference
from keydnn.ir.ops import Dense
from keydnn.ir.ops.recurrent import CELL_GATES, Rnn
from keydnn.ir.types import TensorType
from keydnn.ir.verify import verify

CASES = [
    dict(cell="simple", activation="relu"),
    dict(cell="simple", go_backwards=True, return_sequences=True),
    dict(cell="lstm"),
    dict(cell="lstm", go_backwards=True, restore_time_order=True, return_sequences=True, zero_output_for_mask=True),
    dict(cell="lstm", result="state_c", initial_states=2),
    dict(cell="lstm", result="state_h", recurrent_activation="hard_sigmoid", activation="softsign"),
    dict(cell="gru", reset_after=True, return_sequences=True),
    dict(cell="gru", reset_after=False, result="state_h", initial_states=1),
    dict(cell="gru", reset_after=False, return_sequences=True, go_backwards=True),
]


def _graph(case: dict, masked: bool, units: int = 5, feats: int = 3) -> Graph:
    b = GraphBuilder("rnn", seed=1)
    g = len(CELL_GATES[case["cell"]]) * units
    x = b.input("x", ("N", "T", feats))
    proj = b.add(Dense(), x, b.rand("w", (feats, g), 0.5), b.rand("b", (g,), 0.1))
    extra = [b.input("m", ("N", "T"))] if masked else []
    extra += [b.input(f"s{k}", ("N", units)) for k in range(case.get("initial_states", 0))]
    op = Rnn(units=units, gate_order=CELL_GATES[case["cell"]], masked=masked, **case)
    return b.build(b.add(op, proj, b.rand("u", (units, g), 0.5), b.rand("rb", (g,), 0.1), *extra, name="rnn"))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_cpu_matches_reference(case, masked) -> None:
    graph = _graph(case, masked)
    exe = compile_graph(graph)
    rng = np.random.default_rng(0)
    for batch, steps in ((1, 4), (19, 7), (8, 1)):
        feed = [rng.standard_normal((batch, steps, 3)).astype("float32")]
        if masked:
            m = (rng.random((batch, steps)) > 0.3).astype("float32")
            m[0] = 0
            feed.append(m)
        feed += [rng.standard_normal((batch, 5)).astype("float32") for _ in range(case.get("initial_states", 0))]
        want = run_reference(graph, *feed)[0]
        got = exe(*feed)[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_symbolic_time_axis_prints_and_round_trips() -> None:
    graph = _graph(CASES[3], True)
    text = str(graph)
    assert "%x: f32[N,T,3]" in text and "rnn(%dense0, %u, %rb, %m) {cell=lstm, units=5, gate_order=ifco" in text
    again = Graph.model_validate_json(graph.model_dump_json()).with_weights(graph.weights)
    assert again == graph


def test_shape_rule_and_attribute_checks() -> None:
    x = TensorType(shape=("N", "T", 20))
    u, rb = TensorType(shape=(5, 20)), TensorType(shape=(20,))
    op = Rnn(cell="lstm", units=5, gate_order="ifco", return_sequences=True)
    assert op.infer([x, u, rb]).shape == ("N", "T", 5)
    with pytest.raises(ValueError, match="gate_order"):
        Rnn(cell="gru", units=5, gate_order="ifco")
    with pytest.raises(ValueError, match="state_c"):
        Rnn(cell="gru", units=5, gate_order="zrh", result="state_c")
    with pytest.raises(ValueError, match="initial states"):
        Rnn(cell="lstm", units=5, gate_order="ifco", initial_states=1)
    graph = _graph(CASES[2], False)
    bad = graph.replace(nodes=graph.nodes[:1] + (graph.nodes[1].model_copy(update={"inputs": graph.nodes[1].inputs
                                                                                    + ("x",)}),))
    with pytest.raises(IRError, match="operands"):
        verify(bad)
