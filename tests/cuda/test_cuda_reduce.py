"""numba-cuda kernels of issue 18's reducing ops (layer_norm in every form, reduce), on the simulator,
against the reference and numba-cpu."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import (  # noqa: F401  (fast_simulator: autouse fixture)
    assert_parity, fast_simulator, seeded, single_op_graph, skip_without_cuda,
)

from keydnn.ir.ops import LayerNorm, Reduce

skip_without_cuda()


@pytest.mark.parametrize("axes,gshape,kw", [
    ((1,), (3, 1, 1), {}),
    ((2, 3), (1, 4, 5), {"epsilon": 0.1}),
    ((1, 3), (3, 1, 5), {"center": False}),
    ((3,), (1, 1, 5), {"center": False, "statistic": "mean_square"}),
    ((1, 2, 3), (1,), {"center": False, "statistic": "sum_square", "eps_mode": "max", "epsilon": 1e-12}),
], ids=["channel", "spatial", "rms-variance", "rms", "unit"])
def test_layer_norm(axes, gshape, kw):
    rng = seeded()
    gamma = rng.normal(size=gshape).astype("f4")
    beta = rng.normal(size=gshape).astype("f4")

    def build(b, x):
        return b.add(LayerNorm(axes=axes, **kw), x, b.const("g", gamma), b.const("b", beta))

    assert_parity(single_op_graph(build, ("N", 3, 4, 5)), rng.normal(size=(2, 3, 4, 5)).astype("f4") * 3 + 1)


@pytest.mark.parametrize("mode", ["mean", "sum", "max", "min"])
@pytest.mark.parametrize("axes,keep", [((1,), False), ((2, 3), True), ((1, 3), False)])
def test_reduce(mode, axes, keep):
    rng = seeded()
    graph = single_op_graph(lambda b, x: b.add(Reduce(mode=mode, axes=axes, keepdims=keep), x), ("N", 3, 4, 5))
    assert_parity(graph, rng.normal(size=(2, 3, 4, 5)).astype("f4"))


# -- general math (Keras operations, attention) ----------------------------------------------------------
from keydnn.ir.ops import Binary, MatMul, Slice, Unary  # noqa: E402
from keydnn.ir.ops.math import BINARY_FUNCTIONS, UNARY_FUNCTIONS  # noqa: E402


@pytest.mark.parametrize("function", sorted(UNARY_FUNCTIONS))
def test_unary(function):
    a, b = {"clip": (-0.5, 0.7), "celu": (1.5, 0), "squareplus": (2.0, 0), "soft_shrink": (0.3, 0),
            "hard_shrink": (0.3, 0), "threshold": (0.1, -2.0)}.get(function, (0.0, 0.0))
    x = seeded().normal(size=(2, 3, 4)).astype("f4") * 2
    if function in ("sqrt", "rsqrt", "log", "reciprocal"):
        x = np.abs(x) + 0.1
    if function == "log1p":
        x = np.abs(x)
    graph = single_op_graph(lambda b_, v: b_.add(Unary(function=function, a=a, b=b), v), ("N", 3, 4))
    assert_parity(graph, x, atol=1e-4)


@pytest.mark.parametrize("function", BINARY_FUNCTIONS)
def test_binary_broadcast(function):
    rng = seeded()
    y = (np.abs(rng.normal(size=(1, 4))) + 0.5).astype("f4") if function in ("div", "pow") else \
        np.round(rng.normal(size=(1, 4)), 1).astype("f4")
    x = np.abs(rng.normal(size=(2, 3, 4))).astype("f4") if function == "pow" else \
        np.round(rng.normal(size=(2, 3, 4)), 1).astype("f4")

    def build(b, v):
        return b.add(Binary(function=function), v, b.const("y", y))

    assert_parity(single_op_graph(build, ("N", 3, 4)), x, atol=1e-4)


def test_binary_two_tensors():
    from passes.builders import GraphBuilder
    b = GraphBuilder("two")
    x, y = b.input("x", ("N", 3, 4)), b.input("y", ("N", 1, 4))
    graph = b.build(b.add(Binary(function="sub"), x, y))
    rng = seeded()
    assert_parity(graph, rng.normal(size=(2, 3, 4)).astype("f4"), rng.normal(size=(2, 1, 4)).astype("f4"))


@pytest.mark.parametrize("transpose_b", [False, True])
def test_matmul(transpose_b):
    from passes.builders import GraphBuilder
    b = GraphBuilder("mm")
    x = b.input("x", ("N", 2, 3, 5))
    y = b.input("y", ("N", 2, 4, 5) if transpose_b else ("N", 2, 5, 4))
    graph = b.build(b.add(MatMul(transpose_b=transpose_b, scale=0.5), x, y))
    rng = seeded()
    assert_parity(graph, rng.normal(size=(2, 2, 3, 5)).astype("f4"),
                  rng.normal(size=(2, 2, 4, 5) if transpose_b else (2, 2, 5, 4)).astype("f4"))


def test_matmul_constant_matrix():
    w = seeded().normal(size=(5, 3)).astype("f4")
    graph = single_op_graph(lambda b, v: b.add(MatMul(), v, b.const("w", w)), ("N", 4, 5))
    assert_parity(graph, seeded().normal(size=(2, 4, 5)).astype("f4"))


def test_slice():
    graph = single_op_graph(lambda b, v: b.add(Slice(starts=(1, 0, 2), stops=(3, 4, 6), steps=(1, 2, 3)), v))
    assert_parity(graph, seeded().normal(size=(2, 3, 6, 6)).astype("f4"))


# -- transposed convolution input, interpolating resize ----------------------------------------------------
from keydnn.ir.ops import DilatePad2d, Resize2d  # noqa: E402


@pytest.mark.parametrize("factors,pads", [((2, 2), (1, 2, 1, 2)), ((1, 3), (0, 0, 2, 1)), ((2, 1), (0, 1, 0, 0))])
def test_dilate_pad2d(factors, pads):
    graph = single_op_graph(lambda b, v: b.add(DilatePad2d(factors=factors, pads=pads), v), ("N", 3, 4, 5))
    assert_parity(graph, seeded().normal(size=(2, 3, 4, 5)).astype("f4"))


@pytest.mark.parametrize("method,half", [("bilinear", True), ("bicubic", True), ("nearest", True),
                                         ("nearest", False)])
@pytest.mark.parametrize("size", [(8, 10), (3, 2)])
def test_resize2d(method, half, size):
    graph = single_op_graph(lambda b, v: b.add(Resize2d(size=size, method=method, half_pixel=half), v),
                            ("N", 2, 4, 5))
    assert_parity(graph, seeded().normal(size=(2, 2, 4, 5)).astype("f4"), atol=1e-4)


# -- attention's fused scale + mask + softmax -------------------------------------------------------------
from keydnn.ir.ops import BiasSoftmax  # noqa: E402


@pytest.mark.parametrize("bias_shapes", [[(1, 5)], [(5, 5), (1, 3, 1, 5)], [(1,)]])
def test_bias_softmax(bias_shapes):
    rng = seeded()
    from passes.builders import GraphBuilder
    b = GraphBuilder("bs")
    x = b.input("x", ("N", 3, 5, 5))
    biases = [b.const(f"b{i}", (rng.normal(size=s) * 3).astype("f4")) for i, s in enumerate(bias_shapes)]
    graph = b.build(b.add(BiasSoftmax(), x, *biases))
    assert_parity(graph, rng.normal(size=(2, 3, 5, 5)).astype("f4"))
