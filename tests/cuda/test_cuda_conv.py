"""conv2d and dense on the simulator: every attribute, both conv algorithms, every GEMM tile, split-K."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
from cuda_helpers import (  # noqa: F401  (fast_simulator: autouse fixture)
    assert_parity, fast_simulator, seeded, single_op_graph, skip_without_cuda,
)

from keydnn.backends.numba_cuda import gemm, kernels_conv
from keydnn.ir.ops import Activation, Conv2d, Flatten, Relu

skip_without_cuda()


@pytest.fixture
def rng() -> np.random.Generator:
    return seeded()


@pytest.fixture
def force(monkeypatch) -> Iterator:
    """force(algorithm=..., tile=..., splits=...) for the rest of one test."""

    def set_(algorithm=None, tile=None, splits=None):
        monkeypatch.setattr(kernels_conv, "FORCE_ALGORITHM", algorithm)
        monkeypatch.setattr(gemm, "FORCE_TILE", tile)
        monkeypatch.setattr(gemm, "FORCE_SPLITS", splits)

    yield set_


CONVS = {
    "same-bias": dict(out_ch=4, k=3, padding="same"),
    "valid-stride2-nobias": dict(out_ch=5, k=3, stride=2, bias=False),
    "dilation2": dict(out_ch=4, k=3, dilation=2, padding="same"),
    "1x1": dict(out_ch=6, k=1),
    "rect-2x3-stride2-same": dict(out_ch=3, k=(2, 3), stride=2, padding="same"),
    "grouped": dict(out_ch=6, k=3, groups=3, padding="same"),
    "depthwise": dict(out_ch=3, k=3, groups=3, padding="same"),
    "depthwise-x2": dict(out_ch=6, k=3, groups=3, stride=2),
    "relu6-epilogue": dict(out_ch=4, k=3, padding="same", activation=Relu(max_value=6.0)),
    "leaky-epilogue": dict(out_ch=4, k=3, activation=Relu(negative_slope=0.3, threshold=0.1)),
    "sigmoid-epilogue": dict(out_ch=4, k=3, activation=Activation(function="sigmoid")),
}


@pytest.mark.parametrize("algorithm", ["auto", "direct", "implicit-gemm"])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv2d(name, algorithm, force, rng):
    force(algorithm=None if algorithm == "auto" else algorithm)
    graph = single_op_graph(lambda b, x: b.conv(x, layout="NCHW", **CONVS[name]))
    assert_parity(graph, rng.normal(size=(2, 3, 6, 6)).astype(np.float32))


def test_asymmetric_pads(rng):
    def build(b, x):
        w = b.rand("w", (4, 3, 3, 3))
        return b.add(Conv2d(pads=(0, 2, 1, 0), strides=(1, 2)), x, w, b.rand("bias", (4,)))

    assert_parity(single_op_graph(build), rng.normal(size=(2, 3, 6, 6)).astype(np.float32))


@pytest.mark.parametrize("tile", sorted(gemm.TILES))
def test_every_gemm_tile(tile, force, rng):
    """The production tiles (256 threads a block) run on the simulator too, with ragged edges."""
    force(tile=tile, algorithm="implicit-gemm")
    graph = single_op_graph(lambda b, x: b.dense(b.add(Relu(), b.conv(x, 5, 3, padding="same", layout="NCHW",
                                                                      groups=1)), 3),
                            ("N", 3, 5, 5))
    assert_parity(graph, rng.normal(size=(1, 3, 5, 5)).astype(np.float32))


@pytest.mark.parametrize("splits", [2, 3, 7])
def test_split_k_is_exact(splits, force, rng):
    """Split-K partial sums (conv and dense) reduce to the same result, bias and epilogue applied once."""
    force(splits=splits)

    def build(b, x):
        h = b.conv(x, 4, 3, padding="same", layout="NCHW", activation=Relu())
        h = b.conv(h, 6, 3, groups=2, layout="NCHW")
        return b.dense(b.add(Flatten(), h), 5, activation=Activation(function="tanh"))

    assert_parity(single_op_graph(build), rng.normal(size=(2, 3, 6, 6)).astype(np.float32))


def test_split_choice_fills_the_gpu(monkeypatch):
    """Few tiles and a deep reduction split; enough tiles, or a shallow reduction, do not."""
    monkeypatch.setattr(gemm, "multiprocessor_count", lambda: 100)
    tile = gemm.TILES["8x32"]
    assert gemm.choose_splits(4, 4096, tile) == 16  # batch-1 dense 4096 -> 128
    assert gemm.choose_splits(400, 4096, tile) == 1
    assert gemm.choose_splits(4, 64, tile) == 1
    assert gemm.split_chunk(4096, 16, tile) % tile.bk == 0


def test_tile_choice_follows_rows(monkeypatch):
    monkeypatch.setattr(gemm, "simulator_enabled", lambda: False)
    assert gemm.choose_tile(1) is gemm.TILES["8x32"]
    assert gemm.choose_tile(16) is gemm.TILES["16x64"]
    assert gemm.choose_tile(32) is gemm.TILES["32x64"]
    assert gemm.choose_tile(64) is gemm.TILES["64x64"]
