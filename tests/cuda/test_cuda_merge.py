"""Merge ops on numba-cuda (add, sub, mul, avg, max, min with broadcasting; concat on every axis), against the
reference interpreter and numba-cpu's merge kernels, and the memory plan on DAGs that read values many times."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import (  # noqa: F401  (fast_simulator: autouse fixture)
    assert_parity, compile_cuda, fast_simulator, seeded, skip_without_cuda,
)
from passes.builders import GraphBuilder

from keydnn.ir import Graph, run_reference
from keydnn.ir.ops import Activation, Add, Avg, Concat, Max, Min, Mul, Relu, Sub

skip_without_cuda()

MERGES = {"add": Add, "sub": Sub, "mul": Mul, "avg": Avg, "max": Max, "min": Min}

#: Operand shapes (arity 2 takes the first two). Static shapes: the batch axis broadcasts too.
BROADCASTS = {
    "same": [(2, 3, 4, 5)] * 3,
    "squeeze-excite": [(2, 3, 4, 5), (2, 3, 1, 1), (2, 3, 4, 5)],  # (N, C, H, W) * (N, C, 1, 1)
    "first-broadcast": [(2, 3, 1, 1), (2, 3, 4, 5), (2, 1, 4, 5)],
    "neither-full": [(2, 3, 1, 5), (2, 1, 4, 1), (1, 3, 4, 1)],  # the result is larger than every operand
    "batch": [(1, 3, 4, 5), (2, 3, 4, 5), (2, 1, 1, 1)],
    "vectors": [(2, 6), (2, 1), (1, 6)],
}


def merge_graph(kind: str, shapes: list[tuple], *, copies: bool = True, dtype: str = "float32") -> Graph:
    """``kind`` over one operand per shape; ``copies``: each operand a fresh intermediate (an identity
    activation of an input) that dies at the merge, so the result may be computed in place."""
    b = GraphBuilder(f"{kind}_graph", dtype=dtype)
    xs = [b.input(f"x{i}", shape) for i, shape in enumerate(shapes)]
    if copies:
        xs = [b.add(Activation(function="linear"), x) for x in xs]
    return b.build(b.add(MERGES[kind](), *xs, name=kind))


def _inputs(shapes: list[tuple], dtype: str = "float32") -> list[np.ndarray]:
    rng = seeded()
    return [rng.normal(size=s).astype(dtype) for s in shapes]


@pytest.mark.parametrize("case", sorted(BROADCASTS))
@pytest.mark.parametrize("kind, arity", [(k, n) for k in sorted(MERGES) for n in (2, 3) if k != "sub" or n == 2])
def test_elementwise_merge(kind, arity, case):
    shapes = BROADCASTS[case][:arity]
    assert_parity(merge_graph(kind, shapes), *_inputs(shapes), cpu_mode="ops")


def test_graph_inputs_as_operands_and_float64():
    """Operands straight from graph inputs (never written over), and a float64 graph."""
    shapes = BROADCASTS["squeeze-excite"]
    assert_parity(merge_graph("avg", shapes, copies=False), *_inputs(shapes), cpu_mode="ops")
    assert_parity(merge_graph("sub", shapes[:2], dtype="float64"), *_inputs(shapes[:2], "float64"), cpu_mode="ops")


@pytest.mark.parametrize("kind", ["max", "min"])
def test_max_min_propagate_nan_like_the_reference(kind):
    shapes = [(2, 3, 4, 5), (2, 3, 1, 1), (2, 3, 4, 5)]
    xs = _inputs(shapes)
    xs[0][0, 0, 1, 2] = np.nan  # first operand: must not be replaced by a larger/smaller value
    xs[1][1, 2, 0, 0] = np.nan  # broadcast operand: a whole (H, W) plane of the result
    xs[2][0, 1, 3, 4] = np.nan  # last operand
    for arity in (2, 3):
        got = assert_parity(merge_graph(kind, shapes[:arity]), *xs[:arity], cpu_mode="ops")[0]
        want = run_reference(merge_graph(kind, shapes[:arity]), *xs[:arity])[0]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(got[0, 0, 1, 2]) and np.isnan(got[1, 2]).all()
        assert np.isnan(got[0, 1, 3, 4]) == (arity == 3)


CONCATS = [  # (operand shapes, axis)
    ([(2, 3, 4, 5)], 1),
    ([(2, 3, 4, 5), (2, 2, 4, 5)], 1),
    ([(2, 1, 4, 5), (2, 3, 4, 5), (2, 2, 4, 5)], -3),
    ([(2, 3, 2, 5), (2, 3, 4, 5)], 2),
    ([(2, 3, 4, 5), (2, 3, 1, 5), (2, 3, 3, 5)], -2),
    ([(2, 3, 4, 1), (2, 3, 4, 5)], 3),
    ([(2, 3, 4, 2), (2, 3, 4, 3), (2, 3, 4, 1)], -1),
    ([(2, 6), (2, 6), (2, 5)], -1),
    ([(2, 4, 3), (2, 1, 3)], 1),
    ([(2, 4, 3), (2, 4, 2), (2, 4, 3)], 2),
]


@pytest.mark.parametrize("shapes, axis", CONCATS, ids=[f"rank{len(s[0])}-axis{a}-x{len(s)}" for s, a in CONCATS])
def test_concat_on_every_axis(shapes, axis):
    b = GraphBuilder("concat")
    xs = [b.input(f"x{i}", ("N", *s[1:])) for i, s in enumerate(shapes)]
    graph = b.build(b.add(Concat(axis=axis), *xs))
    got = assert_parity(graph, *_inputs(shapes), cpu_mode="ops")[0]
    np.testing.assert_array_equal(got, np.concatenate(_inputs(shapes), axis=axis))  # a copy: exact


def _storage(exe, key: tuple, node: str):
    """(kind, index) of the buffer a step writes, in the plan for input shapes ``key``."""
    layout = exe._states[key].layout
    i = next(k for k, s in enumerate(exe.plan.steps) if s.node == node)
    return layout.placements[i].kind, layout.placements[i].index


def test_dag_values_read_many_times_outputs_read_later_and_in_place_merges():
    """r feeds four nodes; ``a`` is a graph output and is read afterwards; b dies at ``d`` (which may write
    over it), a broadcast operand and a value merged with itself; two calls on the same buffers. (Against the
    reference only: numba-cpu computes add(d, d, d) in place over d as 4d.)"""
    b = GraphBuilder("dag")
    x, y = b.input("x", ("N", 3, 4, 5)), b.input("y", ("N", 3, 1, 1))
    r = b.add(Relu(negative_slope=0.1), x, name="r")
    a = b.add(Add(), r, y, name="a")
    m = b.add(Mul(), r, a, name="m")
    d = b.add(Sub(), m, r, name="d")  # m dies here: d may take its buffer
    s = b.add(Add(), d, d, d, name="s")  # the same operand three times, in place over it
    c = b.add(Concat(axis=1), s, r, a, name="c")
    e = b.add(Max(), b.add(Min(), c, c, name="cc"), c, name="e")
    graph = b.build(e, a, s)
    exe = compile_cuda(graph)
    for batch in (2, 2, 1):
        xs = _inputs([(batch, 3, 4, 5), (batch, 3, 1, 1)])
        want = run_reference(graph, *xs)
        for g, w in zip(exe(*xs), want):
            np.testing.assert_allclose(g, w, atol=2e-5, rtol=2e-5)
    key = ((2, 3, 4, 5), (2, 3, 1, 1))
    assert _storage(exe, key, "d") == _storage(exe, key, "m")  # in place over a dying operand
    assert _storage(exe, key, "s")[0] == "output" and _storage(exe, key, "a")[0] == "output"
    assert _storage(exe, key, "a") != _storage(exe, key, "s")


def test_device_arrays_in_and_out_of_a_merge_graph_without_copies_back():
    """Device arrays in, device arrays out; an earlier call's outputs survive the next call."""
    from numba import cuda

    shapes = [(2, 3, 4, 5), (2, 3, 1, 1)]
    graph = merge_graph("mul", shapes)
    exe = compile_cuda(graph)
    first_in = _inputs(shapes)
    first = exe(*(cuda.to_device(v) for v in first_in))[0]
    second = exe(*(cuda.to_device(v * 2) for v in first_in))[0]
    assert not isinstance(first, np.ndarray)
    np.testing.assert_allclose(first.copy_to_host(), run_reference(graph, *first_in)[0], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(second.copy_to_host(), 4 * first.copy_to_host(), rtol=2e-5, atol=2e-5)

