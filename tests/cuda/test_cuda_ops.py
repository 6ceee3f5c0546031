"""Every op the numba-cuda backend runs, on the simulator, against the reference and numba-cpu."""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import (  # noqa: F401  (fast_simulator: autouse fixture)
    assert_parity, fast_simulator, seeded, single_op_graph, skip_without_cuda,
)

from keydnn.ir.ops import (
    ACTIVATION_FUNCTIONS, Activation, AvgPool2d, Crop2d, ExpandDims, Flatten, GlobalAvgPool2d, GlobalMaxPool2d,
    MaxPool2d, Pad2d, PRelu, Relu, Reshape, ScaleShift, Softmax, Squeeze, Transpose, Upsample2d,
)

skip_without_cuda()


@pytest.fixture
def rng() -> np.random.Generator:
    return seeded()


def _x(rng, shape=(2, 3, 6, 6), dtype="float32"):
    return rng.normal(size=shape).astype(dtype)


@pytest.mark.parametrize("op", [
    MaxPool2d(kernel=(2, 2), strides=(2, 2)),
    MaxPool2d(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    AvgPool2d(kernel=(2, 2), strides=(1, 1)),
    AvgPool2d(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),  # padding excluded from the count
    GlobalAvgPool2d(), GlobalAvgPool2d(keepdims=True), GlobalMaxPool2d(), GlobalMaxPool2d(keepdims=True),
], ids=lambda op: f"{op.kind}-{getattr(op, 'pads', getattr(op, 'keepdims', ''))}")
def test_pooling(op, rng):
    assert_parity(single_op_graph(lambda b, x: b.add(op, x)), _x(rng))


@pytest.mark.parametrize("op", [
    Relu(), Relu(max_value=0.5), Relu(negative_slope=0.1), Relu(threshold=0.3),
    Relu(max_value=1.0, negative_slope=0.2, threshold=-0.2),
], ids=lambda op: f"relu-{op.max_value}-{op.negative_slope}-{op.threshold}")
def test_relu_keras_formula(op, rng):
    assert_parity(single_op_graph(lambda b, x: b.add(op, x)), _x(rng))


@pytest.mark.parametrize("function", sorted(ACTIVATION_FUNCTIONS))
def test_every_activation_function(function, rng):
    op = Activation(function=function, alpha=0.7 if function == "elu" else 1.0)
    x = _x(rng, (2, 3, 4, 4)) * 3
    assert_parity(single_op_graph(lambda b, x: b.add(op, x), ("N", 3, 4, 4)), x)


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax_any_axis(axis, rng):
    assert_parity(single_op_graph(lambda b, x: b.add(Softmax(axis=axis), x)), _x(rng) * 4)


@pytest.mark.parametrize("op", [
    Flatten(), Reshape(shape=(9, -1)), Transpose(perm=(0, 2, 3, 1), layout="NHWC"),
    ExpandDims(axis=2), Transpose(perm=(3, 1, 0, 2)),
], ids=lambda op: op.kind)
def test_data_movement(op, rng):
    assert_parity(single_op_graph(lambda b, x: b.add(op, x)), _x(rng))


def test_squeeze_after_expand(rng):
    graph = single_op_graph(lambda b, x: b.add(Squeeze(axis=2, layout="NCW"), b.add(ExpandDims(axis=2), x)),
                            ("N", 3, 7), layout="NCW")
    assert_parity(graph, _x(rng, (2, 3, 7)))


@pytest.mark.parametrize("op", [
    Pad2d(pads=(1, 0, 2, 1), value=0.5), Crop2d(crops=(1, 2, 0, 1)), Upsample2d(factors=(2, 3)),
], ids=lambda op: op.kind)
def test_spatial_gathers(op, rng):
    assert_parity(single_op_graph(lambda b, x: b.add(op, x)), _x(rng))


@pytest.mark.parametrize("axis, scale_shape, shift_shape", [
    (1, (3,), (3,)), (1, (1,), (3,)), (1, (), ()), (-1, (6,), (1,)),
    (None, (3, 1, 6), (1,)), (None, (1,), (1,)), (None, (3, 6, 6), (3, 1, 1)),
])
def test_scale_shift_forms(axis, scale_shape, shift_shape, rng):
    def build(b, x):
        return b.add(ScaleShift(axis=axis), x, b.rand("s", scale_shape), b.rand("t", shift_shape))

    assert_parity(single_op_graph(build), _x(rng))


@pytest.mark.parametrize("axis", [1, -1])
def test_batch_norm(axis, rng):
    assert_parity(single_op_graph(lambda b, x: b.bn(x, axis=axis)), _x(rng))


@pytest.mark.parametrize("alpha_shape", [(1,), (3, 1, 1), (3, 6, 6), (1, 6, 1)])
def test_prelu(alpha_shape, rng):
    graph = single_op_graph(lambda b, x: b.add(PRelu(), x, b.rand("alpha", alpha_shape, scale=0.3)))
    assert_parity(graph, _x(rng))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rank", [2, 3])
def test_dense(rank, bias, rng):
    shape = ("N", 5) if rank == 2 else ("N", 3, 5)
    graph = single_op_graph(lambda b, x: b.dense(x, 7, bias=bias), shape)
    assert_parity(graph, _x(rng, (3, 5) if rank == 2 else (2, 3, 5)))


@pytest.mark.parametrize("activation", [Relu(), Relu(max_value=6.0), Activation(function="tanh"),
                                        Activation(function="gelu")], ids=lambda a: getattr(a, "function", "relu"))
def test_dense_fused_epilogue(activation, rng):
    graph = single_op_graph(lambda b, x: b.dense(x, 6, activation=activation), ("N", 9))
    assert_parity(graph, _x(rng, (2, 9)))


def test_float64_graph(rng):
    def build(b, x):
        h = b.conv(x, 4, 3, padding="same", layout="NCHW", activation=Relu())
        h = b.add(GlobalAvgPool2d(), h)
        return b.add(Softmax(), b.dense(h, 5))

    assert_parity(single_op_graph(build, dtype="float64"), _x(rng, dtype="float64"))


def test_nan_propagates_through_max_pools(rng):
    x = _x(rng)
    x[0, 1, 2, 3] = np.nan
    for op in (MaxPool2d(kernel=(2, 2), strides=(2, 2)), GlobalMaxPool2d()):
        got = assert_parity(single_op_graph(lambda b, v: b.add(op, v)), x)[0]
        assert np.isnan(got[0, 1]).any() and not np.isnan(got[1]).any()
