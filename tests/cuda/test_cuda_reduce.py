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
