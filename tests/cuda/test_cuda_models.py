"""Small whole models through the default pipeline, on the simulator, against the reference and numba-cpu."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import (  # noqa: F401  (fast_simulator: autouse fixture)
    assert_parity, fast_simulator, seeded, skip_without_cuda,
)
from passes.builders import GraphBuilder

from keydnn.ir.ops import (
    Activation, ExpandDims, Flatten, GlobalAvgPool2d, MaxPool2d, Pad2d, Relu, Softmax, Squeeze, Upsample2d,
)
from keydnn.ir.passes import DEFAULT_PIPELINE, run_pipeline

skip_without_cuda()


@pytest.fixture
def rng() -> np.random.Generator:
    return seeded()


def _kinds(graph) -> list[str]:
    return [n.op.kind for n in graph.nodes]


def test_seed_cnn_channels_first(rng):
    """The issue's seed CNN, shrunk: Conv-ReLU, MaxPool, Conv-ReLU, GlobalAvgPool, Dense, Softmax."""
    b = GraphBuilder("seed")
    x = b.input("x", ("N", 1, 6, 6), "NCHW")
    h = b.add(Relu(), b.conv(x, 3, 3, padding="same", layout="NCHW"))
    h = b.add(MaxPool2d(kernel=(2, 2), strides=(2, 2)), h)
    h = b.add(Relu(), b.conv(h, 4, 3, padding="same", layout="NCHW"))
    h = b.add(GlobalAvgPool2d(), h)
    graph = run_pipeline(b.build(b.add(Softmax(), b.dense(h, 5))), DEFAULT_PIPELINE)
    assert "relu" not in _kinds(graph)  # fused into the convs: the epilogue path is what runs
    assert_parity(graph, rng.normal(size=(2, 1, 6, 6)).astype(np.float32))


def test_cifar_style_cnn_channels_last_with_batchnorm(rng):
    """Conv-BN-ReLU, Conv-ReLU, MaxPool, Flatten, Dense-ReLU, Dense, Softmax from a channels_last model:
    BN folded, layout canonicalized (boundary transpose, Flatten permutation folded into Dense)."""
    b = GraphBuilder("cifar")
    x = b.input("x", ("N", 6, 6, 3), "NHWC")
    h = b.add(Relu(), b.bn(b.conv(x, 4, 3, padding="same"), axis=-1))
    h = b.add(Relu(), b.conv(h, 4, 3, padding="same"))
    h = b.add(MaxPool2d(kernel=(2, 2), strides=(2, 2), layout="NHWC"), h)
    h = b.add(Flatten(), h)
    h = b.add(Relu(), b.dense(h, 8))
    graph = run_pipeline(b.build(b.add(Softmax(), b.dense(h, 4))), DEFAULT_PIPELINE)
    assert "batch_norm" not in _kinds(graph) and "transpose" in _kinds(graph)
    assert_parity(graph, rng.normal(size=(2, 6, 6, 3)).astype(np.float32))


def test_conv1d_stack(rng):
    """1-D layers are 2-D ops between expand_dims and squeeze (views on the GPU: no copies)."""
    b = GraphBuilder("conv1d")
    x = b.input("x", ("N", 9, 3), "NWC")
    h = b.add(ExpandDims(axis=1, layout="NHWC"), x)
    h = b.conv(h, 4, (1, 3), padding="same", activation=Activation(function="elu", alpha=0.5))
    h = b.add(Squeeze(axis=1, layout="NWC"), h)
    graph = run_pipeline(b.build(h), DEFAULT_PIPELINE)
    assert_parity(graph, rng.normal(size=(2, 9, 3)).astype(np.float32))


def test_decoder_style_spatial_ops(rng):
    b = GraphBuilder("decoder")
    x = b.input("x", ("N", 2, 3, 3), "NCHW")
    h = b.add(Upsample2d(factors=(2, 2)), x)
    h = b.add(Pad2d(pads=(1, 1, 1, 1)), h)
    h = b.conv(h, 3, 3, layout="NCHW", activation=Relu())
    graph = run_pipeline(b.build(h), DEFAULT_PIPELINE)
    assert_parity(graph, rng.normal(size=(2, 2, 3, 3)).astype(np.float32))
