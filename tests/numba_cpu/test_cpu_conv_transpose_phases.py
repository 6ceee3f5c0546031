"""Transposed convolutions with kernel == stride run as one GEMM over the undilated input plus a phase scatter
(``emit_convt``): the ``dilate_pad2d`` + ``conv2d`` pair the Keras converter emits, checked against the NumPy
reference interpreter and against Keras; pairs that do not qualify keep the two stages."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_helpers import check, make_graph, node, randn

from keydnn.backends.numba_cpu import compile_graph
from keydnn.ir.ops import Activation, Conv2d, DilatePad2d, Relu


def _pair(c: int, h: int, w: int, o: int, k: tuple, f: tuple, pads: tuple, *, bias: bool = True, act=None,
          conv_pads=(0, 0, 0, 0)):
    weights = {"w": randn(o, c, *k, seed=o + c, scale=(c * k[0] * k[1]) ** -0.5)}
    ops = ["w"] + (["b"] if bias else [])
    if bias:
        weights["b"] = randn(o, seed=2)
    nodes = [node("r", Relu(), "x"),  # the stuffed operand lives in the arena (a graph input is never folded)
             node("d", DilatePad2d(factors=f, pads=pads), "r"),
             node("c", Conv2d(activation=act, pads=conv_pads), "d", *ops)]
    return make_graph(nodes, (1, c, h, w), weights)


def _stages(exe) -> str:
    return "\n".join(next(iter(exe._variants.values())).program.stages)


@pytest.mark.parametrize("c,h,w,o,k", [(8, 16, 16, 16, (2, 2)), (3, 5, 7, 4, (2, 2)), (5, 6, 4, 3, (3, 3)),
                                       (4, 7, 9, 5, (2, 3)), (33, 9, 33, 10, (2, 2))])
@pytest.mark.parametrize("bias,act", [(True, None), (True, Relu()), (False, Activation(function="sigmoid"))])
def test_kernel_equal_stride_runs_as_phases(c, h, w, o, k, bias, act) -> None:
    g = _pair(c, h, w, o, k, k, (k[0] - 1, k[0] - 1, k[1] - 1, k[1] - 1), bias=bias, act=act)
    exe = compile_graph(g, mode="codegen")
    assert "phases-gemm" in _stages(exe) and "dilate_pad2d" not in _stages(exe)
    for n in (1, 2, 5):
        check(g, randn(n, c, h, w, seed=n), exe=exe)


@pytest.mark.parametrize("k,f,pads,conv_pads", [
    ((3, 3), (2, 2), (2, 3, 2, 3), (0, 0, 0, 0)),  # kernel > stride: taps overlap
    ((2, 2), (2, 2), (1, 2, 1, 2), (0, 0, 0, 0)),  # another border (output_padding)
    ((2, 2), (2, 2), (1, 1, 1, 1), (1, 0, 1, 0)),  # a padded conv
])
def test_other_pairs_keep_two_stages(k, f, pads, conv_pads) -> None:
    g = _pair(4, 6, 5, 3, k, f, pads, conv_pads=conv_pads)
    exe = compile_graph(g, mode="codegen")
    assert "phases-gemm" not in _stages(exe) and "dilate_pad2d" in _stages(exe)
    check(g, randn(2, 4, 6, 5, seed=1), exe=exe)


def _upconv(padding: str):
    def build(k):
        L = k.layers
        return k.Sequential([
            L.Input((12, 10, 6)), L.Conv2D(8, 3, padding="same", activation="relu"),
            L.Conv2DTranspose(5, 2, strides=2, padding=padding, activation="relu"),
            L.Conv2DTranspose(4, (3, 2), strides=(3, 2), padding=padding),
        ])
    return build


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_keras_conv2d_transpose_matches(keras_sources, padding: str) -> None:
    from parity_helpers import check_parity

    sources = keras_sources(f"s19d_upconv_{padding}", _upconv(padding))
    check_parity(sources, allow_non_linear_activation=True)
    import keydnn

    model = keydnn.from_keras(sources[0][1], allow_non_linear_activation=True)
    model(np.zeros((1, 12, 10, 6), np.float32))
    from keydnn.backends.numba_cpu.runtime import executable as cg_exec

    assert _stages(cg_exec.try_codegen(model.graph)).count("phases-gemm") == 2


def test_float64_phases() -> None:
    weights = {"w": randn(6, 4, 2, 2, seed=1, dtype="float64"), "b": randn(6, seed=2, dtype="float64")}
    nodes = [node("r", Relu(), "x"), node("d", DilatePad2d(factors=(2, 2), pads=(1, 1, 1, 1)), "r"),
             node("c", Conv2d(activation=Relu()), "d", "w", "b")]
    g = make_graph(nodes, (1, 4, 9, 11), weights, dtype="float64")
    exe = compile_graph(g, mode="codegen")
    assert "phases-gemm" in _stages(exe)
    for n in (1, 3):
        check(g, np.random.default_rng(n).standard_normal((n, 4, 9, 11)), exe=exe, rtol=1e-10, atol=1e-10)
