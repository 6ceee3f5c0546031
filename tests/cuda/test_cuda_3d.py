"""The 5-D volume ops (issue 18, 3-D) on numba-cuda (the simulator in CI): each op against the reference
interpreter and numba-cpu, both conv3d GEMM paths (implicit GEMM and direct), and a small 3-D CNN graph."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import assert_parity, fast_simulator, seeded, skip_without_cuda  # noqa: F401  (autouse fixture)

from keydnn.backends.numba_cuda import kernels_conv
from keydnn.ir import Graph
from keydnn.ir.graph import Node
from keydnn.ir.ops import (
    Activation, AvgPool3d, Conv3d, Crop3d, Dense, MaxPool3d, Pad3d, Reduce, Relu, Upsample3d,
)
from keydnn.ir.passes import run_pipeline
from keydnn.ir.types import TensorType, Value

skip_without_cuda()


def _graph(steps, xshape, weights) -> Graph:
    """A chain of (op, weight names) steps over an NCDHW input of per-sample shape ``xshape``."""
    x = Value(name="x", type=TensorType(shape=("N",) + xshape, layout="NCDHW"))
    nodes, prev = [], "x"
    for i, (op, names) in enumerate(steps):
        nodes.append(Node(name=f"v{i}", op=op, inputs=(prev, *names), outputs=(Value(name=f"v{i}"),)))
        prev = f"v{i}"
    g = Graph.build(name="g", inputs=(x,), outputs=(prev,), nodes=tuple(nodes), weights=weights)
    return run_pipeline(g, "infer-shapes")


def _w(rng, *shape):
    return (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1)).astype("f4")


OPS = {
    "conv3d-strided-padded-bias": (Conv3d(strides=(1, 2, 1), pads=(1, 1, 0, 1, 1, 1)), (2, 3, 4, 3),
                                   [(3, 2, 2, 2, 3), (3,)]),
    "conv3d-dilated-groups-tanh": (Conv3d(dilations=(2, 1, 2), groups=2, activation=Activation(function="tanh")),
                                   (4, 4, 3, 4), [(2, 2, 2, 2, 2)]),
    "conv3d-depth-stride-relu": (Conv3d(strides=(2, 1, 1), pads=(1, 0, 0, 0, 0, 0), activation=Relu()), (2, 4, 2, 3),
                                 [(3, 2, 2, 1, 2), (3,)]),
    "max_pool3d": (MaxPool3d(kernel=(2, 3, 2), strides=(2, 1, 3), pads=(1, 0, 1, 1, 0, 1)), (2, 3, 4, 4), []),
    "avg_pool3d": (AvgPool3d(kernel=(3, 2, 2), strides=(2, 2, 1), pads=(1, 1, 0, 1, 1, 0)), (2, 3, 4, 4), []),
    "pad3d-stuffing": (Pad3d(factors=(2, 1, 3), pads=(1, 2, 0, 1, 2, 0)), (2, 2, 3, 2), []),
    "pad3d": (Pad3d(pads=(1, 0, 0, 2, 1, 1)), (2, 2, 2, 3), []),
    "crop3d": (Crop3d(crops=(1, 0, 2, 1, 0, 1)), (2, 3, 4, 3), []),
    "upsample3d": (Upsample3d(factors=(2, 1, 3)), (2, 2, 3, 2), []),
}


@pytest.mark.parametrize("case", sorted(OPS))
def test_op_matches_reference_and_cpu(case):
    rng = seeded()
    op, xshape, shapes = OPS[case]
    weights = {f"w{i}": _w(rng, *s) for i, s in enumerate(shapes)}
    graph = _graph([(op, tuple(sorted(weights)))], xshape, weights)
    assert_parity(graph, rng.normal(size=(2,) + xshape).astype("f4"), cpu_mode="ops")


@pytest.mark.parametrize("algorithm", ["direct", "implicit-gemm"])
def test_conv3d_both_conv2d_algorithms(algorithm, monkeypatch):
    """conv3d runs the conv2d kernels over depth planes: each of them, grouped and not."""
    monkeypatch.setattr(kernels_conv, "FORCE_ALGORITHM", algorithm)
    rng = seeded()
    weights = {"w": _w(rng, 4, 1, 2, 2, 2), "b": _w(rng, 4)}
    graph = _graph([(Conv3d(groups=2, pads=(0, 1, 1, 0, 0, 1)), ("w", "b"))], (2, 3, 3, 3), weights)
    assert_parity(graph, rng.normal(size=(2, 2, 3, 3, 3)).astype("f4"), cpu_mode="ops")


def test_small_3d_cnn():
    """The 3-D CNN of tests/test_layers_3d.py as the frontend lowers it (channels-first): conv3d + relu, max pool,
    transposed conv (pad3d + conv3d), upsample, crop, pad, average pool, global average (reduce), dense."""
    rng = seeded()
    weights = {"k1": _w(rng, 3, 2, 3, 3, 3), "b1": _w(rng, 3), "k2": _w(rng, 2, 3, 3, 3, 3), "b2": _w(rng, 2),
               "d": _w(rng, 2, 4), "db": _w(rng, 4)}
    steps = [(Conv3d(pads=(1,) * 6, activation=Relu()), ("k1", "b1")),
             (MaxPool3d(kernel=(2, 2, 2), strides=(2, 2, 2)), ()),
             (Pad3d(factors=(2, 2, 2), pads=(1, 2, 1, 2, 1, 2)), ()),
             (Conv3d(), ("k2", "b2")),
             (Upsample3d(factors=(1, 2, 1)), ()),
             (Crop3d(crops=(1, 0, 2, 1, 0, 1)), ()),
             (Pad3d(pads=(1, 1, 0, 0, 1, 1)), ()),
             (AvgPool3d(kernel=(2, 2, 2), strides=(2, 2, 2), pads=(0, 1, 0, 1, 0, 0)), ()),
             (Reduce(mode="mean", axes=(2, 3, 4)), ()),
             (Dense(), ("d", "db"))]
    graph = _graph(steps, (2, 4, 4, 4), weights)
    assert_parity(graph, rng.normal(size=(2, 2, 4, 4, 4)).astype("f4"), cpu_mode="ops")
