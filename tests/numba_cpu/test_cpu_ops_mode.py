"""The per-op mode runs every node as a one-node generated program: compiled once per node signature, every
node's result inspectable with ``trace``, and nodes the generator refuses named in a warning."""

from __future__ import annotations

import numpy as np
import pytest

from keydnn.backends.numba_cpu import add_compile_listener, compile_graph, remove_compile_listener
from keydnn.errors import SlowPathWarning
from keydnn.ir import Graph, Node, TensorType, Value, run_reference
from keydnn.ir.ops import Conv2d, Relu, Transpose

from cpu_helpers import TOL, make_graph, node, randn, seed_cnn


def _chain(depth: int, seed: int = 0) -> Graph:
    """``depth`` conv 3x3 + relu pairs of one shape, each conv with weights of its own."""
    weights = {f"w{i}": randn(4, 4, 3, 3, seed=seed + i, scale=0.2) for i in range(depth)}
    nodes, prev = [], "x"
    for i in range(depth):
        nodes += [node(f"conv{i}", Conv2d(pads=(1, 1, 1, 1)), prev, f"w{i}"), node(f"act{i}", Relu(), f"conv{i}")]
        prev = f"act{i}"
    return make_graph(nodes, (1, 4, 7, 5), weights)


def test_one_program_per_node_signature() -> None:
    """Six convs of one signature (other weights) and six relus load two programs, not twelve; a second
    executable of another chain of the same shapes loads none."""
    loads: list[dict] = []

    def listen(event: dict) -> None:
        if event["event"] == "start":
            loads.append(event)

    add_compile_listener(listen)
    try:
        g = _chain(6)
        exe = compile_graph(g, mode="ops")
        first = len(loads)
        other = compile_graph(_chain(6, seed=50), mode="ops")
    finally:
        remove_compile_listener(listen)
    assert first <= 2, [e["graph"] for e in loads]
    assert len(loads) == first  # the same signatures: loaded in this process already
    assert {e["graph"] for e in loads} <= {"op_conv2d", "op_relu"}
    x = randn(3, 4, 7, 5)
    for graph, ex in ((g, exe), (_chain(6, seed=50), other)):
        np.testing.assert_allclose(ex(x)[0], run_reference(graph, x)[0], **TOL)


def test_trace_returns_every_nodes_result() -> None:
    g = seed_cnn()
    exe = compile_graph(g, mode="ops")
    x = randn(2, 1, 28, 28)
    trace = exe.trace(x)
    names = [v.name for v in g.inputs] + [n.outputs[0].name for n in g.nodes]
    assert list(trace) == names
    everything = g.replace(outputs=tuple(n.outputs[0].name for n in g.nodes))
    want = run_reference(everything, x)
    for n, w in zip(g.nodes, want):
        got = trace[n.outputs[0].name]
        assert got.shape == w.shape and got.dtype == w.dtype, n.name
        np.testing.assert_allclose(got, w, **TOL, err_msg=n.name)
    np.testing.assert_array_equal(trace[g.outputs[0]], exe(x)[0])  # what a call computes
    assert len({id(a) for a in trace.values()}) == len(trace)  # every step its own buffer (no arena reuse)
    assert all(np.shares_memory(a, b) is False for a in trace.values() for b in trace.values() if a is not b)


def test_plan_names_each_nodes_program() -> None:
    exe = compile_graph(seed_cnn(), mode="ops")
    text = str(exe.plan)
    assert "conv2d (generated, op_conv2d)" in text and "softmax (generated, op_softmax)" in text


def test_node_the_generator_refuses_runs_on_the_reference_and_says_so() -> None:
    graph = Graph(
        name="swap",
        inputs=[Value(name="x", type=TensorType(shape=(2, 3), dtype="float32"))],
        nodes=[Node(name="t", op=Transpose(perm=(1, 0)), inputs=("x",),
                    outputs=[Value(name="y", type=TensorType(shape=(3, 2), dtype="float32"))])],
        outputs=["y"],
    )
    with pytest.warns(SlowPathWarning, match=r"node 't' \(transpose\) runs on the NumPy reference kernel.*batch"):
        exe = compile_graph(graph, mode="ops")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(exe(x)[0], x.T)
    assert "reference" in str(exe.plan)
