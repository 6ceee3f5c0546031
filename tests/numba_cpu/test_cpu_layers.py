"""numba-cpu dense, activations, softmax, shape views, normalization, spatial and merge ops, in both modes, against the reference interpreter."""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
from cpu_helpers import (
    EPILOGUES,
    MODES,
    TOL,
    check,
    check_many,
    graph_of,
    make_graph,
    node,
    randn,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from keydnn.backends.numba_cpu import compile_graph
from keydnn.ir import run_reference
from keydnn.ir.ops import (
    ACTIVATION_FUNCTIONS,
    Activation,
    Add,
    Avg,
    BatchNorm,
    Concat,
    Conv2d,
    Crop2d,
    Dense,
    ExpandDims,
    Flatten,
    GlobalMaxPool2d,
    Max,
    Min,
    Mul,
    Pad2d,
    PRelu,
    Relu,
    Reshape,
    ScaleShift,
    Softmax,
    Squeeze,
    Sub,
    Transpose,
    Upsample2d,
)

# -- dense, elementwise, softmax, shape ops -----------------------------------------------------

@pytest.mark.parametrize("epilogue", ["none", "relu", "leaky", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_dense(epilogue: str, bias: bool) -> None:
    weights = {"w": randn(12, 7, seed=1, scale=12 ** -0.5)}
    if bias:
        weights["b"] = randn(7, seed=2)
    op = Dense(activation=EPILOGUES[epilogue])
    g = make_graph([node("fc", op, "x", *sorted(weights, reverse=True))], (1, 12), weights, layout="NC")
    for n in (1, 5):
        check(g, randn(n, 12, seed=n))


def test_dense_on_rank3_input() -> None:
    weights = {"w": randn(6, 4, seed=1), "b": randn(4, seed=2)}
    g = make_graph([node("fc", Dense(), "x", "w", "b")], (1, 3, 6), weights, layout="ANY")
    check(g, randn(2, 3, 6))


ACT_INPUT = np.concatenate([np.linspace(-8, 8, 161), [-30.0, -1e-3, 0.0, 1e-3, 30.0]]).reshape(1, -1)


@pytest.mark.parametrize("function", sorted(ACTIVATION_FUNCTIONS))
def test_every_activation_function(function: str) -> None:
    op = Activation(function=function, alpha=0.6 if function == "elu" else 1.0)
    g = make_graph([node("act", op, "x")], ACT_INPUT.shape, layout="NC")
    x = ACT_INPUT.astype(np.float32)
    if function == "exponential":
        x = np.clip(x, -8.0, 8.0)  # exp(30) is out of float32's 1e-5 relative reach
    check(g, x)


@pytest.mark.parametrize("max_value", [None, 0.0, 0.5, 6.0])
@pytest.mark.parametrize("negative_slope", [0.0, 0.2])
@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.7])
def test_relu_variants(max_value: Optional[float], negative_slope: float, threshold: float) -> None:
    op = Relu(max_value=max_value, negative_slope=negative_slope, threshold=threshold)
    g = make_graph([node("relu", op, "x")], (1, 2, 3, 30))
    x = np.broadcast_to(np.linspace(-2, 8, 30, dtype=np.float32), (2, 2, 3, 30)).copy()
    check(g, x)


@pytest.mark.parametrize("axis,shape", [(1, (3, 5, 4, 2)), (-1, (3, 5, 4, 2)), (-1, (4, 10)), (2, (2, 3, 6))])
def test_softmax(axis: int, shape: tuple) -> None:
    g = make_graph([node("sm", Softmax(axis=axis), "x")], shape, layout="ANY")
    x = randn(*shape, scale=5.0)
    check(g, x)
    check(g, x + 1000.0)  # max subtraction keeps large logits finite


def test_shape_ops_chain() -> None:
    nodes = [
        node("to_nhwc", Transpose(perm=(0, 2, 3, 1), layout="NHWC"), "x"),
        node("flat", Flatten(), "to_nhwc"),
        node("re", Reshape(shape=(4, -1)), "flat"),
        node("t", Transpose(perm=(0, 2, 1)), "re"),
    ]
    g = make_graph(nodes, (1, 3, 4, 2), outputs=("t", "flat"))
    check(g, randn(2, 3, 4, 2))


# -- norm, prelu, spatial, shape views ------------------------------------------------------------

@pytest.mark.parametrize("axis,shape", [(1, (2, 5, 4, 3)), (-1, (2, 4, 3, 5)), (2, (3, 2, 6)), (1, (4, 7))])
def test_batch_norm_along_any_axis(axis: int, shape: tuple) -> None:
    c = shape[axis]
    weights = {"m": randn(c, seed=1), "v": np.abs(randn(c, seed=2)) + 0.1, "g": randn(c, seed=3),
               "b": randn(c, seed=4)}
    g = make_graph([node("bn", BatchNorm(axis=axis, epsilon=1e-3), "x", "m", "v", "g", "b")], shape, weights,
                   layout="ANY")
    check(g, randn(*shape, seed=5, scale=3.0))


SCALE_SHIFT_CASES = {
    "channel-vectors": (1, (2, 5, 3, 4), (5,), (5,)),
    "channel-scalar-scale": (1, (2, 5, 3, 4), (), (5,)),
    "channel-(1,)-shift": (-1, (2, 3, 4, 5), (5,), (1,)),
    "channel-last-of-3d": (2, (2, 3, 6), (6,), (6,)),
    "sample-scalars": (None, (2, 3, 4, 4), (), ()),
    "sample-per-pixel": (None, (2, 3, 4, 5), (1, 4, 5), (3, 1, 1)),
    "sample-full": (None, (2, 3, 4), (3, 4), (3, 4)),
    "sample-middle": (None, (2, 3, 4, 5), (1, 4, 1), (1,)),
}


@pytest.mark.parametrize("case", list(SCALE_SHIFT_CASES))
def test_scale_shift_both_forms(case: str) -> None:
    axis, shape, s_shape, t_shape = SCALE_SHIFT_CASES[case]
    weights = {"s": randn(*s_shape, seed=1) if s_shape else np.float32(1.7),
               "t": randn(*t_shape, seed=2) if t_shape else np.float32(-0.3)}
    g = make_graph([node("ss", ScaleShift(axis=axis), "x", "s", "t")], shape, weights, layout="ANY")
    check(g, randn(*shape, seed=3))


@pytest.mark.parametrize("alpha_shape", [(), (1,), (3, 1, 1), (1, 4, 5), (3, 4, 5), (1, 1, 5)])
def test_prelu_alpha_shapes(alpha_shape: tuple) -> None:
    alpha = randn(*alpha_shape, seed=1) if alpha_shape else np.float32(0.25)
    g = make_graph([node("p", PRelu(), "x", "a")], (2, 3, 4, 5), {"a": alpha}, layout="ANY")
    x = randn(2, 3, 4, 5, seed=2)
    x[0, 0, 0, :2] = (0.0, np.nan)
    got = compile_graph(g)(x)[0]
    np.testing.assert_allclose(got, run_reference(g, x)[0], **TOL)  # NaN where the reference has NaN


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_affine_ops_generated(data: st.DataObject) -> None:
    """scale_shift (both forms) and prelu on random ranks, shapes and parameter broadcasts."""
    rank = data.draw(st.integers(2, 4), label="rank")
    shape = tuple(data.draw(st.integers(1, 5)) for _ in range(rank))
    kind = data.draw(st.sampled_from(["channel", "sample", "prelu"]), label="kind")
    if kind == "channel":
        axis = data.draw(st.integers(1, rank - 1))
        sizes = [data.draw(st.sampled_from([(), (1,), (shape[axis],)])) for _ in range(2)]
        op, names = ScaleShift(axis=axis if data.draw(st.booleans()) else axis - rank), ("s", "t")
    else:
        sizes = [tuple(d if data.draw(st.booleans()) else 1 for d in shape[1:]) for _ in range(2)]
        op, names = (ScaleShift(axis=None), ("s", "t")) if kind == "sample" else (PRelu(), ("s",))
    weights = {n: randn(*sz, seed=k + 1) for k, (n, sz) in enumerate(zip(names, sizes))}
    g = make_graph([node("op", op, "x", *names)], shape, weights, layout="ANY")
    check(g, randn(*shape, seed=7), exe=compile_graph(g, mode=data.draw(st.sampled_from(MODES), label="mode")))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_pad_crop_upsample_both_layouts(layout: str) -> None:
    nodes = [
        node("pad", Pad2d(pads=(1, 2, 0, 3), value=0.5, layout=layout), "x"),
        node("up", Upsample2d(factors=(2, 3), layout=layout), "pad"),
        node("crop", Crop2d(crops=(2, 1, 3, 4), layout=layout), "up"),
    ]
    shape = (2, 3, 5, 4) if layout == "NCHW" else (2, 5, 4, 3)
    g = make_graph(nodes, shape, layout=layout, outputs=("crop", "pad", "up"))
    check(g, randn(*shape))


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_spatial_ops_generated(data: st.DataObject) -> None:
    layout = data.draw(st.sampled_from(["NCHW", "NHWC"]), label="layout")
    n, c, h, w = (data.draw(st.integers(1, 4)) for _ in range(4))
    kind = data.draw(st.sampled_from(["pad", "crop", "up", "gmp"]), label="kind")
    if kind == "pad":
        op = Pad2d(pads=tuple(data.draw(st.integers(0, 3)) for _ in range(4)), value=data.draw(st.sampled_from([0.0, -1.5])),
                   layout=layout)
    elif kind == "crop":
        top, left = data.draw(st.integers(0, h - 1)), data.draw(st.integers(0, w - 1))
        op = Crop2d(crops=(top, data.draw(st.integers(0, h - 1 - top)), left, data.draw(st.integers(0, w - 1 - left))),
                    layout=layout)
    elif kind == "up":
        op = Upsample2d(factors=(data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))), layout=layout)
    else:
        op = GlobalMaxPool2d(keepdims=data.draw(st.booleans()), layout=layout)
    shape = (n, c, h, w) if layout == "NCHW" else (n, h, w, c)
    g = make_graph([node("op", op, "x")], shape, layout=layout)
    check(g, randn(*shape, seed=data.draw(st.integers(0, 9))),
          exe=compile_graph(g, mode=data.draw(st.sampled_from(MODES), label="mode")))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_max_pool(layout: str, keepdims: bool) -> None:
    shape = (3, 5, 7, 6) if layout == "NCHW" else (3, 7, 6, 5)
    g = make_graph([node("gmp", GlobalMaxPool2d(keepdims=keepdims, layout=layout), "x")], shape, layout=layout)
    x = randn(*shape)
    check(g, x)
    check(g, -np.abs(x) - 1.0)
    x[1, 2, 3, 4] = np.nan
    got = compile_graph(g)(x)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(run_reference(g, x)[0]))


def test_expand_dims_and_squeeze_are_views_around_1d_layers() -> None:
    """A Conv1D-style chain: (N, C, W) -> expand H -> conv -> squeeze -> (N, O, W')."""
    weights = {"w": randn(4, 3, 1, 3, seed=1, scale=0.3)}
    nodes = [
        node("ex", ExpandDims(axis=2, layout="NCHW"), "x"),
        node("conv", Conv2d(pads=(0, 0, 1, 1)), "ex", "w"),
        node("sq", Squeeze(axis=2, layout="NCW"), "conv"),
        node("ex2", ExpandDims(axis=1), "sq"),
    ]
    g = make_graph(nodes, (2, 3, 9), weights, layout="NCW", outputs=("sq", "ex2"))
    check(g, randn(2, 3, 9))


# -- merge ops ----------------------------------------------------------------------------------

MERGE_OPS = {"add": Add, "sub": Sub, "mul": Mul, "avg": Avg, "max": Max, "min": Min}


@pytest.mark.parametrize("kind", list(MERGE_OPS))
def test_merge_ops_with_broadcasting(kind: str) -> None:
    shapes = {"a": (2, 3, 4, 5), "b": (2, 3, 1, 1), "c": (1, 1, 4, 5)}
    names = ("a", "b") if kind == "sub" else ("a", "b", "c")
    g = graph_of([node("m", MERGE_OPS[kind](), *names)], {k: shapes[k] for k in names})
    xs = [randn(*shapes[k], seed=i) for i, k in enumerate(names)]
    check_many(g, *xs)


def test_merge_broadcast_first_operand_and_nan() -> None:
    g = graph_of([node("m", Max(), "a", "b")], {"a": (2, 1, 5), "b": (2, 3, 5)})
    a, b = randn(2, 1, 5, seed=1), randn(2, 3, 5, seed=2)
    a[0, 0, 1], b[1, 2, 3] = np.nan, np.nan
    got = compile_graph(g)(a, b)[0]
    np.testing.assert_allclose(got, run_reference(g, a, b)[0], **TOL)


@pytest.mark.parametrize("mode", ["codegen", "ops"])
@pytest.mark.parametrize("kind", ["add", "mul", "sub"])
def test_merge_reading_one_value_twice_never_writes_over_it(mode: str, kind: str) -> None:
    """add(r, r, r) with r dead afterwards: r must not be overwritten while it is still an operand."""
    ops = {"add": Add, "mul": Mul, "sub": Sub}
    operands = ("r", "r") if kind == "sub" else ("r", "r", "r")
    g = graph_of([node("r", Relu(), "x"), node("m", ops[kind](), *operands)], {"x": (2, 3, 5)})
    x = randn(2, 3, 5, seed=7)
    np.testing.assert_allclose(compile_graph(g, mode=mode)(x)[0], run_reference(g, x)[0], **TOL)


def test_residual_block_with_add_and_concat() -> None:
    """conv -> relu -> conv, added to the block input, concatenated with it along channels."""
    weights = {"w1": randn(4, 4, 3, 3, seed=1, scale=0.2), "w2": randn(4, 4, 3, 3, seed=2, scale=0.2)}
    nodes = [
        node("c1", Conv2d(pads=(1, 1, 1, 1), activation=Relu()), "x", "w1"),
        node("c2", Conv2d(pads=(1, 1, 1, 1)), "c1", "w2"),
        node("sum", Add(), "c2", "x"),
        node("r", Relu(), "sum"),
        node("cat", Concat(axis=1), "r", "x", "c1"),
    ]
    g = make_graph(nodes, (2, 4, 6, 6), weights)
    exe = compile_graph(g)
    check(g, randn(3, 4, 6, 6), exe=exe)
    check(g, randn(1, 4, 6, 6, seed=4), exe=exe)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_merge_ops_generated(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(list(MERGE_OPS) + ["concat"]), label="kind")
    rank = data.draw(st.integers(2, 4), label="rank")
    full = [data.draw(st.integers(1, 4)) for _ in range(rank)]
    count = 2 if kind == "sub" else data.draw(st.integers(1 if kind == "concat" else 2, 4), label="operands")
    shapes = []
    if kind == "concat":
        axis = data.draw(st.integers(1, rank - 1), label="axis")
        for _ in range(count):
            s = list(full)
            s[axis] = data.draw(st.integers(1, 3))
            shapes.append(tuple(s))
        op = Concat(axis=axis if data.draw(st.booleans()) else axis - rank)
    else:
        for _ in range(count):
            shapes.append(tuple(d if data.draw(st.booleans()) else 1 for d in full))
        op = MERGE_OPS[kind]()
    names = [f"x{i}" for i in range(count)]
    # the batch axis may broadcast too: inputs give their own batch sizes
    g = graph_of([node("m", op, *names)], dict(zip(names, shapes)))
    xs = [randn(*s, seed=i) for i, s in enumerate(shapes)]
    check_many(g, *xs, mode=data.draw(st.sampled_from(MODES), label="mode"))
