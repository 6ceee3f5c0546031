"""The numba-cpu backend against the NumPy reference interpreter, op by op and as chains.

Every check compares numbers with ``keydnn.ir.reference.run_reference`` (the
oracle), never only that something ran. Convolutions are checked with each
kernel algorithm forced, since the shape heuristic alone would leave some
kernels untested.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Optional, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keydnn.backends.numba_cpu import KERNELS, NumbaCpuExecutable, cg_emit_nn, compile_graph, kernels_conv
from keydnn.errors import BackendError
from keydnn.ir import OP_CLASSES, Graph, Node, TensorType, Value, run_reference
from keydnn.ir.ops import (
    ACTIVATION_FUNCTIONS, Activation, Add, Avg, AvgPool2d, BatchNorm, Concat, Conv2d, Crop2d, Dense, ExpandDims,
    Flatten, GlobalAvgPool2d, GlobalMaxPool2d, Max, MaxPool2d, Min, Mul, Opaque, Pad2d, PRelu, Relu, Reshape,
    ScaleShift, Softmax, Squeeze, Sub, Transpose, Upsample2d,
)
from keydnn.ir.passes import run_pipeline

TOL = {"rtol": 1e-5, "atol": 1e-5}
#: The two execution modes of compile_graph.
MODES = ("ops", "codegen")


# -- helpers ------------------------------------------------------------------------------------

def make_graph(nodes: Sequence[Node], shape: tuple, weights: dict | None = None, *, dtype: str = "float32",
               outputs: Optional[tuple[str, ...]] = None, layout: str = "NCHW") -> Graph:
    """A one-input graph ``x`` with shapes inferred (batch symbolic)."""
    g = Graph.build(
        name="t", inputs=(Value(name="x", type=TensorType(shape=("N",) + tuple(shape[1:]), dtype=dtype, layout=layout)),),
        outputs=outputs or (nodes[-1].outputs[0].name,), nodes=tuple(nodes), weights=weights or {},
    )
    return run_pipeline(g, "infer-shapes")


def node(name: str, op, *inputs: str) -> Node:
    return Node(name=name, op=op, inputs=tuple(inputs), outputs=(Value(name=name),))


def randn(*shape: int, seed: int = 0, dtype: str = "float32", scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def check(graph: Graph, x: np.ndarray, *, exe: NumbaCpuExecutable | None = None, **tol) -> list[np.ndarray]:
    exe = exe or compile_graph(graph)
    got = exe(x)
    want = run_reference(graph, x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, **(tol or TOL))
    return got


@contextlib.contextmanager
def patched(module, name: str, value) -> Iterator[None]:
    """``module.name = value`` for the duration of the block."""
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def conv_algorithm(name: Optional[str]):
    """Force one conv2d kernel of the per-op path while graphs are compiled (chosen at compile time)."""
    return patched(kernels_conv, "FORCE_ALGORITHM", name)


#: Every way a conv2d runs: each per-op kernel forced, and the generated code (which picks implicit GEMM,
#: channel-vector tiles or an im2col panel, or direct loops for grouped filters, by shape), also with each
#: GEMM form forced where it applies.
CONV_PATHS = (tuple(f"ops:{a}" for a in kernels_conv.ALGORITHMS) + ("codegen",)
              + tuple(f"codegen:{f}" for f in cg_emit_nn.CONV_FORMS))


def conv_form(name: Optional[str]):
    """Force one GEMM form of the generated conv2d code while code is generated: when the executable is made
    (static sample shapes) or at a shape's first call. (The forced-form tests ran the default form while the
    form was only forced around calls.)"""
    return patched(cg_emit_nn, "FORCE_CONV_FORM", name)


def compile_path(graph: Graph, path: str):
    if path.startswith("codegen"):
        form = path.partition(":")[2]
        if not form:
            exe = compile_graph(graph, mode="codegen")
            assert exe.mode == "codegen"
            return exe
        with conv_form(form):  # a graph of static sample shapes compiles here, the others on their first call
            exe = compile_graph(graph, mode="codegen")
        assert exe.mode == "codegen"

        def forced(*args):
            with conv_form(form):
                return exe(*args)

        forced._variants = exe._variants  # what was compiled stays inspectable
        return forced
    with conv_algorithm(path.split(":")[1]):
        return compile_graph(graph, mode="ops")


def conv_graph(n: int, c: int, h: int, w: int, o: int, k: tuple[int, int], *, bias: bool = True,
               dtype: str = "float32", seed: int = 0, **attrs) -> tuple[Graph, np.ndarray]:
    groups = attrs.get("groups", 1)
    fan_in = c // groups * k[0] * k[1]
    weights = {"w": randn(o, c // groups, *k, seed=seed + 1, dtype=dtype, scale=fan_in ** -0.5)}
    inputs = ["x", "w"]
    if bias:
        weights["b"] = randn(o, seed=seed + 2, dtype=dtype, scale=0.1)
        inputs.append("b")
    g = make_graph([node("conv", Conv2d(**attrs), *inputs)], (n, c, h, w), weights, dtype=dtype)
    return g, randn(n, c, h, w, seed=seed, dtype=dtype)


EPILOGUES = {
    "none": None,
    "relu": Relu(),
    "relu6": Relu(max_value=6.0),
    "leaky": Relu(negative_slope=0.1),
    "thresholded": Relu(threshold=0.3, max_value=1.0, negative_slope=0.05),
    "sigmoid": Activation(function="sigmoid"),
    "gelu": Activation(function="gelu"),
    "elu": Activation(function="elu", alpha=0.7),
}


# -- conv2d -------------------------------------------------------------------------------------

CONV_CASES = {
    "basic": dict(n=2, c=3, h=9, w=9, o=4, k=(3, 3)),
    "same-pads": dict(n=1, c=3, h=8, w=8, o=5, k=(3, 3), pads=(1, 1, 1, 1)),
    "asym-pads": dict(n=2, c=3, h=7, w=10, o=4, k=(3, 2), pads=(0, 2, 1, 0)),
    "stride2": dict(n=2, c=4, h=11, w=10, o=6, k=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    "stride3-mixed": dict(n=1, c=2, h=13, w=12, o=3, k=(3, 4), strides=(3, 1), pads=(2, 0, 0, 3)),
    "dilation2": dict(n=2, c=3, h=12, w=11, o=4, k=(3, 3), dilations=(2, 2), pads=(2, 2, 2, 2)),
    "dilation-stride": dict(n=1, c=3, h=15, w=15, o=4, k=(3, 3), dilations=(2, 1), strides=(2, 3), pads=(1, 0, 2, 1)),
    "groups2": dict(n=2, c=4, h=8, w=8, o=6, k=(3, 3), groups=2, pads=(1, 1, 1, 1)),
    "depthwise": dict(n=2, c=6, h=9, w=9, o=6, k=(3, 3), groups=6, pads=(1, 1, 1, 1)),
    "depthwise-mult2": dict(n=1, c=4, h=8, w=7, o=8, k=(3, 3), groups=4, strides=(2, 2)),
    "pointwise": dict(n=3, c=8, h=5, w=6, o=7, k=(1, 1)),
    "no-bias": dict(n=2, c=3, h=6, w=6, o=4, k=(3, 3), bias=False, pads=(1, 1, 1, 1)),
    "kernel-as-large-as-input": dict(n=2, c=2, h=4, w=5, o=3, k=(4, 5)),
    "deep": dict(n=2, c=40, h=6, w=6, o=20, k=(3, 3), pads=(1, 1, 1, 1)),
    "wide-rows": dict(n=2, c=3, h=6, w=37, o=10, k=(3, 3), pads=(1, 1, 1, 1)),
    "row-pairs-odd": dict(n=1, c=5, h=7, w=12, o=9, k=(3, 3), pads=(1, 1, 1, 1)),
    "dilated-wide-strided-rows": dict(n=1, c=2, h=9, w=40, o=8, k=(3, 3), dilations=(2, 2), strides=(2, 1),
                                      pads=(2, 2, 2, 2)),
    "pointwise-wide": dict(n=2, c=6, h=4, w=8, o=12, k=(1, 1)),
    "depthwise-wide-strided-dilated": dict(n=2, c=5, h=9, w=40, o=10, k=(3, 3), groups=5, strides=(2, 3),
                                           dilations=(1, 2), pads=(1, 2, 3, 0)),
    "depthwise-stride2-wide-odd-pad": dict(n=1, c=3, h=6, w=70, o=3, k=(3, 3), groups=3, strides=(2, 2),
                                           pads=(1, 1, 1, 0)),
    "depthwise-stride2-wide-even-pad": dict(n=2, c=2, h=5, w=66, o=4, k=(3, 3), groups=2, strides=(2, 2),
                                            pads=(0, 1, 0, 1)),
    "depthwise-5x5-tall": dict(n=2, c=3, h=21, w=23, o=3, k=(5, 5), groups=3, pads=(2, 2, 2, 2)),
    "depthwise-5x5-stride2-mult3": dict(n=1, c=2, h=17, w=35, o=6, k=(5, 5), groups=2, strides=(2, 2),
                                        pads=(2, 1, 2, 1)),
    "depthwise-row-stride-no-bias": dict(n=2, c=4, h=20, w=18, o=4, k=(3, 3), groups=4, strides=(2, 1),
                                         pads=(1, 1, 1, 1), bias=False),
    "depthwise-3x2-general": dict(n=1, c=3, h=10, w=21, o=3, k=(3, 2), groups=3, pads=(1, 1, 0, 1)),
    "channel-staged-stem": dict(n=2, c=3, h=64, w=64, o=24, k=(3, 3), strides=(2, 2), pads=(0, 1, 0, 1)),
    "pointwise-packed-slabs": dict(n=2, c=8, h=32, w=32, o=20, k=(1, 1)),
    "narrow-rows-64-channels": dict(n=1, c=8, h=8, w=8, o=64, k=(3, 3), pads=(1, 1, 1, 1)),
    "strided-83-channels": dict(n=2, c=6, h=9, w=9, o=83, k=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    "pointwise-strided-40-channels": dict(n=2, c=7, h=10, w=10, o=40, k=(1, 1), strides=(2, 2)),
}


@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("case", list(CONV_CASES), ids=list(CONV_CASES))
def test_conv2d_matches_reference(case: str, path: str) -> None:
    spec = dict(CONV_CASES[case])
    g, x = conv_graph(spec.pop("n"), spec.pop("c"), spec.pop("h"), spec.pop("w"), spec.pop("o"), spec.pop("k"), **spec)
    check(g, x, exe=compile_path(g, path))


@pytest.mark.parametrize("path", CONV_PATHS)
@pytest.mark.parametrize("epilogue", list(EPILOGUES), ids=list(EPILOGUES))
def test_conv2d_fused_epilogue(epilogue: str, path: str) -> None:
    g, x = conv_graph(2, 3, 7, 7, 4, (3, 3), pads=(1, 1, 1, 1), activation=EPILOGUES[epilogue])
    check(g, x, exe=compile_path(g, path))


@pytest.mark.parametrize("epilogue", list(EPILOGUES), ids=list(EPILOGUES))
def test_depthwise_conv2d_fused_epilogue(epilogue: str) -> None:
    """The vectorized depthwise helper: relu-family epilogues in its store, the others in a pass after."""
    g, x = conv_graph(2, 6, 7, 19, 12, (3, 3), pads=(1, 1, 1, 1), groups=6, activation=EPILOGUES[epilogue])
    check(g, x, exe=compile_path(g, "codegen"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k, strides, dilations, unrolled", [
    ((3, 3), (1, 1), (1, 1), True), ((3, 3), (2, 2), (1, 1), True), ((5, 5), (2, 2), (1, 1), True),
    ((5, 5), (1, 1), (1, 1), True), ((3, 3), (2, 1), (1, 1), False), ((3, 3), (1, 1), (2, 2), False),
    ((7, 7), (1, 1), (1, 1), False)])
def test_depthwise_kernel_choice(k: tuple, strides: tuple, dilations: tuple, unrolled: bool, dtype: str) -> None:
    """Common filter shapes run the unrolled kernels (``dwk_*``), the rest the general helper; both agree with
    the reference in both dtypes, across several 8-row tiles and a ragged last one."""
    pads = tuple(d * (kk // 2) for kk, d in zip(k, dilations) for _ in range(2))
    g, x = conv_graph(2, 3, 19, 21, 6, k, pads=pads, strides=strides, dilations=dilations, groups=3, dtype=dtype,
                      activation=Relu())
    exe = compile_path(g, "codegen")
    check(g, x, exe=exe, rtol=1e-5, atol=1e-5)
    helpers = " ".join(next(iter(exe._variants.values())).program.thunks)
    assert ("dwk_" in helpers) == unrolled and ("dw_conv_planes" in helpers) != unrolled


def test_set_conflict_follows_l1_sets() -> None:
    """Rows one 4 KiB way apart share a set; 64 bytes more spreads them; a 1 KiB pitch spreads over 4 sets."""
    conflict = cg_emit_nn.set_conflict
    assert conflict(4096, 32) and conflict(8192, 8) and not conflict(4096, 6)
    assert not conflict(4096 + 64, 32) and not conflict(1028, 64)
    assert conflict(1024, 64) and not conflict(1024, 24)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv2d_staged_and_packed_paths(dtype: str) -> None:
    """Planes one L1 way apart (32x32): channel-vector tiles go through the staging block, a 1x1 conv packs
    its input slabs; both agree with the reference, and the stage descriptions say which path ran."""
    for spec, tag, path in ((dict(c=3, h=64, o=40, k=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)), "staged=",
                             "codegen:channel"),
                            (dict(c=24, h=32, o=20, k=(1, 1)), "packed-slabs", "codegen")):
        g, x = conv_graph(3, spec.pop("c"), spec["h"], spec.pop("h"), spec.pop("o"), spec.pop("k"), dtype=dtype,
                          activation=Relu(), **spec)
        exe = compile_path(g, path)
        check(g, x, exe=exe, rtol=1e-5, atol=1e-5)
        assert any(tag in st for st in next(iter(exe._variants.values())).program.stages)


def test_conv2d_default_choice_matches_reference_for_batch_1_and_5() -> None:
    g, _ = conv_graph(1, 8, 10, 10, 16, (3, 3), pads=(1, 1, 1, 1), activation=Relu())
    exe = compile_graph(g)
    for n in (1, 5):
        check(g, randn(n, 8, 10, 10, seed=n), exe=exe)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("form", cg_emit_nn.CONV_FORMS)
def test_conv2d_forms_with_general_epilogue(form: str, dtype: str) -> None:
    """Each GEMM form with an epilogue applied after the tile store, several channel blocks and both dtypes."""
    g, x = conv_graph(3, 5, 9, 7, 37, (3, 3), pads=(1, 1, 1, 1), strides=(1, 2), dtype=dtype,
                      activation=Activation(function="elu", alpha=0.7))
    check(g, x, exe=compile_path(g, f"codegen:{form}"), rtol=1e-5, atol=1e-5)


def test_conv_form_follows_lane_use() -> None:
    """Rows of at least half a vector go to implicit GEMM (strided ones over phase-split rows), narrow rows
    to channel vectors (even with few channels: packing a panel costs more), unpadded pointwise convs read
    their input as the im2col panel."""
    form = cg_emit_nn.conv_form
    assert form(ow=32, o_ch=16, pixels=1024, lanes=16) == "implicit"
    assert form(ow=16, o_ch=32, pixels=256, lanes=16) == "implicit"  # row pairs (strided: phase-split rows)
    assert form(ow=8, o_ch=64, pixels=64, lanes=16) == "channel"
    assert form(ow=8, o_ch=64, pixels=64, lanes=16, pointwise=True) == "im2col"
    assert form(ow=32, o_ch=64, pixels=1024, lanes=16, pointwise=True) == "im2col"
    assert form(ow=9, o_ch=3, pixels=81, lanes=16) == "implicit"
    assert form(ow=7, o_ch=3, pixels=49, lanes=16) == "channel"


def test_conv2d_float64_weights_in_float32_graph_are_cast() -> None:
    w = randn(4, 3, 3, 3, seed=3, dtype="float64", scale=0.2)
    g = make_graph([node("conv", Conv2d(), "x", "w")], (1, 3, 6, 6), {"w": w})
    check(g, randn(2, 3, 6, 6))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_conv2d_generated(data: st.DataObject) -> None:
    groups = data.draw(st.sampled_from([1, 1, 2, 3]), label="groups")
    cg = data.draw(st.integers(1, 3), label="cg")
    og = data.draw(st.integers(1, 3), label="og")
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    sh, sw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    dh, dw = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    pads = tuple(data.draw(st.integers(0, 3)) for _ in range(4))
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = data.draw(st.integers(max(1, span_h - pads[0] - pads[1]), 12), label="h")
    w = data.draw(st.integers(max(1, span_w - pads[2] - pads[3]), 12), label="w")
    n = data.draw(st.integers(1, 3), label="n")
    path = data.draw(st.sampled_from(CONV_PATHS), label="path")
    g, x = conv_graph(n, cg * groups, h, w, og * groups, (kh, kw), strides=(sh, sw), dilations=(dh, dw),
                      pads=pads, groups=groups, bias=data.draw(st.booleans()))
    check(g, x, exe=compile_path(g, path))


# -- pooling ------------------------------------------------------------------------------------

POOL_CASES = {
    "2x2/2": dict(kernel=(2, 2), strides=(2, 2)),
    "3x3/2-same": dict(kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1)),
    "asym-pads": dict(kernel=(3, 2), strides=(1, 2), pads=(2, 0, 0, 1)),
    "stride-not-kernel": dict(kernel=(3, 3), strides=(1, 2)),
    "stride>kernel": dict(kernel=(2, 2), strides=(3, 3), pads=(1, 0, 1, 0)),
}


@pytest.mark.parametrize("cls", [MaxPool2d, AvgPool2d], ids=["max", "avg"])
@pytest.mark.parametrize("case", list(POOL_CASES), ids=list(POOL_CASES))
def test_pool2d_matches_reference(cls, case: str) -> None:
    g = make_graph([node("pool", cls(**POOL_CASES[case]), "x")], (1, 3, 9, 8))
    x = randn(2, 3, 9, 8)
    check(g, x)
    check(g, -np.abs(x))  # all negative: a padded zero must never win a max


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_pool2d_generated(data: st.DataObject) -> None:
    kh, kw = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    pads = (data.draw(st.integers(0, kh - 1)), data.draw(st.integers(0, kh - 1)),
            data.draw(st.integers(0, kw - 1)), data.draw(st.integers(0, kw - 1)))
    h = data.draw(st.integers(max(1, kh - pads[0] - pads[1]), 11))
    w = data.draw(st.integers(max(1, kw - pads[2] - pads[3]), 11))
    cls = data.draw(st.sampled_from([MaxPool2d, AvgPool2d]))
    op = cls(kernel=(kh, kw), strides=(data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))), pads=pads)
    n, c = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    g = make_graph([node("pool", op, "x")], (n, c, h, w))
    check(g, randn(n, c, h, w, seed=data.draw(st.integers(0, 9))),
          exe=compile_graph(g, mode=data.draw(st.sampled_from(MODES), label="mode")))


def test_max_pool_propagates_nan_like_numpy() -> None:
    g = make_graph([node("pool", MaxPool2d(kernel=(2, 2), strides=(2, 2)), "x")], (1, 1, 4, 4))
    x = randn(1, 1, 4, 4)
    x[0, 0, 1, 1] = np.nan
    got = compile_graph(g)(x)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(run_reference(g, x)[0]))


@pytest.mark.parametrize("keepdims", [False, True])
def test_global_avg_pool(keepdims: bool) -> None:
    g = make_graph([node("gap", GlobalAvgPool2d(keepdims=keepdims), "x")], (1, 5, 7, 6))
    check(g, randn(3, 5, 7, 6))


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


# -- whole graphs ---------------------------------------------------------------------------------

def seed_cnn(dtype: str = "float32") -> Graph:
    """The seed CNN: conv 8 3x3 same, relu, maxpool 2, conv 16 3x3 same, relu, gap, dense 10, softmax."""
    weights = {
        "c1w": randn(8, 1, 3, 3, seed=1, dtype=dtype, scale=0.3), "c1b": randn(8, seed=2, dtype=dtype, scale=0.1),
        "c2w": randn(16, 8, 3, 3, seed=3, dtype=dtype, scale=0.1), "c2b": randn(16, seed=4, dtype=dtype, scale=0.1),
        "dw": randn(16, 10, seed=5, dtype=dtype, scale=0.3), "db": randn(10, seed=6, dtype=dtype, scale=0.1),
    }
    nodes = [
        node("conv1", Conv2d(pads=(1, 1, 1, 1)), "x", "c1w", "c1b"),
        node("relu1", Relu(), "conv1"),
        node("pool", MaxPool2d(kernel=(2, 2), strides=(2, 2)), "relu1"),
        node("conv2", Conv2d(pads=(1, 1, 1, 1), activation=Relu()), "pool", "c2w", "c2b"),
        node("gap", GlobalAvgPool2d(), "conv2"),
        node("dense", Dense(), "gap", "dw", "db"),
        node("softmax", Softmax(), "dense"),
    ]
    return make_graph(nodes, (1, 1, 28, 28), weights, dtype=dtype)


@pytest.mark.parametrize("n", [1, 5])
def test_seed_cnn(n: int) -> None:
    g = seed_cnn()
    exe = compile_graph(g)
    check(g, randn(n, 1, 28, 28, seed=n), exe=exe)
    check(g, randn(n, 1, 28, 28, seed=n + 10), exe=exe)  # buffers reused across calls


def test_float64_graph_is_computed_in_float64() -> None:
    g = seed_cnn("float64")
    out = check(g, randn(3, 1, 28, 28, dtype="float64"), rtol=1e-10, atol=1e-12)
    assert out[0].dtype == np.float64


def test_outputs_are_fresh_and_intermediates_can_be_outputs() -> None:
    weights = {"w": randn(4, 2, 3, 3, seed=1, scale=0.3)}
    nodes = [
        node("conv", Conv2d(pads=(1, 1, 1, 1)), "x", "w"),
        node("relu", Relu(), "conv"),
        node("flat", Flatten(), "relu"),
        node("sm", Softmax(), "flat"),
    ]
    g = make_graph(nodes, (1, 2, 5, 5), weights, outputs=("sm", "relu", "flat", "sm", "x"))
    exe = compile_graph(g)
    x = randn(2, 2, 5, 5)
    first = check(g, x, exe=exe)
    kept = [a.copy() for a in first]
    for a in first:
        a[...] = 123.0  # the caller owns what it got: scribbling must not leak into later calls
    second = check(g, x, exe=exe)
    for k, s in zip(kept, second):
        np.testing.assert_array_equal(k, s)
    assert len({id(a) for a in second}) == len(second)
    np.testing.assert_array_equal(x, randn(2, 2, 5, 5))  # the input is never written


def test_memory_plan_reuses_buffers_along_a_chain() -> None:
    weights = {f"w{i}": randn(4, 4, 3, 3, seed=i, scale=0.2) for i in range(6)}
    nodes, prev = [], "x"
    for i in range(6):
        nodes += [node(f"conv{i}", Conv2d(pads=(1, 1, 1, 1)), prev, f"w{i}"), node(f"act{i}", Relu(), f"conv{i}")]
        prev = f"act{i}"
    g = make_graph(nodes, (1, 4, 6, 6), weights)
    exe = compile_graph(g, mode="ops")
    check(g, randn(3, 4, 6, 6), exe=exe)
    layout = exe._layout(((3, 4, 6, 6),))
    assert len(layout.arena) == 2  # ping-pong: every relu runs in place, convs alternate two buffers
    assert [p.kind for p in layout.placements][-2:] == ["fresh", "fresh"]  # the output's storage is per call


def test_read_only_and_non_contiguous_inputs() -> None:
    g = seed_cnn()
    exe = compile_graph(g)
    x = randn(2, 1, 28, 28)
    x.flags.writeable = False
    check(g, x, exe=exe)
    wide = randn(2, 1, 28, 56)
    check(g, wide[..., ::2], exe=exe)


def test_concurrent_calls_from_8_threads() -> None:
    g = seed_cnn()
    exe = compile_graph(g)
    # batch 16 is big enough for the parallel kernels, 1 and 3 run on the calling thread
    inputs = [randn((1, 3, 16)[i % 3], 1, 28, 28, seed=100 + i) for i in range(8)]
    expected = [run_reference(g, x)[0] for x in inputs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(25):
                np.testing.assert_allclose(exe(inputs[i])[0], expected[i], **TOL)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# -- errors -------------------------------------------------------------------------------------

def test_kernel_table_covers_every_op_kind() -> None:
    """Every op of the IR (but the placeholder that never runs) has a numba-cpu kernel."""
    assert set(KERNELS) == set(OP_CLASSES) - {"opaque"}


def test_opaque_node_is_rejected_by_name() -> None:
    nodes = [
        node("mystery", Opaque(keras_class="Lambda", reason="arbitrary Python", output_shape=("N", 3, 4, 4)), "x"),
        node("relu", Relu(), "mystery"),
    ]
    g = make_graph(nodes, (1, 3, 4, 4))
    with pytest.raises(BackendError, match=r"mystery.*Lambda"):
        compile_graph(g)


def test_nhwc_conv_asks_for_canonicalize_layout() -> None:
    weights = {"w": randn(4, 3, 3, 3)}
    g = make_graph([node("conv_nhwc", Conv2d(layout="NHWC"), "x", "w")], (1, 8, 8, 3), weights, layout="NHWC")
    with pytest.raises(BackendError, match=r"conv_nhwc.*canonicalize-layout"):
        compile_graph(g)


def test_nhwc_pool_asks_for_canonicalize_layout() -> None:
    g = make_graph([node("pool_nhwc", MaxPool2d(kernel=(2, 2), strides=(2, 2), layout="NHWC"), "x")],
                   (1, 8, 8, 3), layout="NHWC")
    with pytest.raises(BackendError, match=r"pool_nhwc.*canonicalize-layout"):
        compile_graph(g)


@pytest.mark.parametrize("mode", ["ops", "codegen"])
def test_op_without_kernel_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    from keydnn.backends.numba_cpu.cg_exec import EMITTERS

    monkeypatch.delitem(KERNELS, "softmax")
    monkeypatch.delitem(EMITTERS, "softmax")  # codegen falls back to the per-op kernels, which lack it too
    g = make_graph([node("probabilities", Softmax(), "x")], (1, 4), layout="NC")
    with pytest.raises(BackendError, match=r"probabilities.*softmax"):
        compile_graph(g, mode=mode)


def test_wrong_input_shape_is_a_value_error() -> None:
    exe = compile_graph(seed_cnn())
    with pytest.raises(ValueError):
        exe(randn(1, 2, 28, 28))


# -- norm, prelu, spatial, shape views ------------------------------------------------------------

def graph_of(nodes: Sequence[Node], inputs: dict[str, tuple], weights: dict | None = None, *,
             dtype: str = "float32", layouts: dict[str, str] | None = None,
             outputs: Optional[tuple[str, ...]] = None) -> Graph:
    """A graph with several inputs (name -> example shape; the batch becomes symbolic), shapes inferred."""
    layouts = layouts or {}
    values = tuple(Value(name=k, type=TensorType(shape=("N",) + tuple(s[1:]), dtype=dtype, layout=layouts.get(k, "ANY")))
                   for k, s in inputs.items())
    g = Graph.build(name="t", inputs=values, outputs=outputs or (nodes[-1].outputs[0].name,), nodes=tuple(nodes),
                    weights=weights or {})
    return run_pipeline(g, "infer-shapes")


def check_many(graph: Graph, *xs: np.ndarray, mode: Optional[str] = None, **tol) -> list[np.ndarray]:
    got = compile_graph(graph, mode=mode)(*xs)
    want = run_reference(graph, *xs)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, **(tol or TOL))
    return got


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


# -- whole-graph code generation ------------------------------------------------------------------

def _conv_op(data: st.DataObject, c: int, h: int, w: int, weights: dict, name: str) -> tuple[Conv2d, list[str], int]:
    groups = data.draw(st.sampled_from([1, 1, 1, c]), label="groups")
    o = data.draw(st.integers(1, 12)) if groups == 1 else c * data.draw(st.integers(1, 2))
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    strides = (data.draw(st.sampled_from([1, 1, 2])), data.draw(st.sampled_from([1, 1, 2])))
    pads = (kh // 2, (kh - 1) // 2, kw // 2, (kw - 1) // 2)
    act = data.draw(st.sampled_from([None, Relu(), Relu(max_value=6.0), Activation(function="tanh")]))
    cg = c // groups
    weights[f"{name}_w"] = randn(o, cg, kh, kw, seed=len(weights), scale=(cg * kh * kw) ** -0.5)
    inputs = [f"{name}_w"]
    if data.draw(st.booleans()):
        weights[f"{name}_b"] = randn(o, seed=len(weights), scale=0.1)
        inputs.append(f"{name}_b")
    return Conv2d(strides=strides, pads=pads, groups=groups, activation=act), inputs, o


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_codegen_random_graphs_match_reference(data: st.DataObject) -> None:
    """Random NCHW chains (with skip connections) through the generated code, at two batch sizes."""
    c, h, w = data.draw(st.integers(1, 6)), data.draw(st.integers(4, 20)), data.draw(st.integers(4, 36))
    shape0 = (1, c, h, w)
    weights: dict = {}
    nodes: list[Node] = []
    cur = "x"
    for i in range(data.draw(st.integers(1, 5), label="layers")):
        kind = data.draw(st.sampled_from(["conv", "conv", "pool", "act", "affine", "spatial", "merge"]), label="op")
        name = f"n{i}"
        if kind == "conv":
            op, ins, c = _conv_op(data, c, h, w, weights, name)
            nodes.append(node(name, op, cur, *ins))
            h, w = -(-h // op.strides[0]), -(-w // op.strides[1])
        elif kind == "pool" and min(h, w) >= 2:
            cls = data.draw(st.sampled_from([MaxPool2d, AvgPool2d]))
            nodes.append(node(name, cls(kernel=(2, 2), strides=(2, 2)), cur))
            h, w = h // 2, w // 2
        elif kind == "act":
            nodes.append(node(name, data.draw(st.sampled_from([Relu(), Activation(function="sigmoid")])), cur))
        elif kind == "affine":
            weights[f"{name}_s"], weights[f"{name}_t"] = randn(c, seed=i + 50), randn(c, seed=i + 60)
            weights[f"{name}_a"] = randn(c, 1, 1, seed=i + 70, scale=0.2)
            op = data.draw(st.sampled_from(["ss", "prelu"]))
            nodes.append(node(name, ScaleShift(axis=1), cur, f"{name}_s", f"{name}_t") if op == "ss"
                         else node(name, PRelu(), cur, f"{name}_a"))
            for k in ([f"{name}_a"] if op == "ss" else [f"{name}_s", f"{name}_t"]):
                weights.pop(k)
        elif kind == "spatial":
            which = data.draw(st.sampled_from(["pad", "crop", "up", "transpose"]))
            if which == "pad":
                nodes.append(node(name, Pad2d(pads=(1, 0, 2, 1)), cur))
                h, w = h + 1, w + 3
            elif which == "crop" and min(h, w) >= 3:
                nodes.append(node(name, Crop2d(crops=(1, 0, 0, 1)), cur))
                h, w = h - 1, w - 1
            elif which == "up" and h * w <= 200:
                nodes.append(node(name, Upsample2d(factors=(2, 1)), cur))
                h = 2 * h
            else:  # a round trip through channels_last: two gathers
                nodes += [node(f"{name}_t", Transpose(perm=(0, 2, 3, 1), layout="NHWC"), cur),
                          node(name, Transpose(perm=(0, 3, 1, 2), layout="NCHW"), f"{name}_t")]
        elif kind == "merge":
            nodes.append(node(f"{name}_r", Relu(), cur))
            merge = data.draw(st.sampled_from(["add", "max", "concat"]))
            op = {"add": Add(), "max": Max(), "concat": Concat(axis=1)}[merge]
            nodes.append(node(name, op, cur, f"{name}_r"))
            c = 2 * c if merge == "concat" else c
        else:
            continue
        cur = nodes[-1].outputs[0].name
    head = data.draw(st.sampled_from(["spatial", "gap", "dense"]), label="head")
    if head == "gap":
        nodes.append(node("gap", GlobalAvgPool2d(), cur))
        cur = "gap"
    elif head == "dense":
        weights["fc_w"] = randn(c * h * w, 10, seed=99, scale=(c * h * w) ** -0.5)
        weights["fc_b"] = randn(10, seed=98)
        nodes += [node("flat", Flatten(), cur), node("fc", Dense(activation=Relu()), "flat", "fc_w", "fc_b"),
                  node("sm", Softmax(), "fc")]
        cur = "sm"
    if not nodes:
        nodes.append(node("r", Relu(), "x"))
        cur = "r"
    g = make_graph(nodes, shape0, weights, outputs=(cur,) if cur != nodes[-1].outputs[0].name else None)
    exe = compile_graph(g, mode="codegen")
    assert exe.mode == "codegen"
    for n in (1, data.draw(st.integers(2, 5), label="batch")):
        check(g, randn(n, *shape0[1:], seed=n), exe=exe)


@pytest.fixture(params=["native-pool", "python-helpers"])
def threaded(request, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every codegen call uses three threads (more than CI has cores: the scheduler must not care), joined
    by the native worker pool (where a C compiler builds it) or by Python helper threads."""
    from keydnn.backends.numba_cpu import cg_exec

    monkeypatch.setattr(cg_exec, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(cg_exec, "_THREADS", 3)
    if request.param == "python-helpers":
        monkeypatch.setattr(cg_exec, "_POOL", [None])
    elif cg_exec._pool() is None:
        pytest.skip("no native worker pool here (no C compiler, or the compile cache is off)")


def test_codegen_helper_threads_match_reference(threaded: None) -> None:
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    for n in (1, 2, 7):
        for seed in range(3):  # back-to-back calls: a late helper must never touch the next call
            check(g, randn(n, 1, 28, 28, seed=10 * n + seed), exe=exe)


def test_native_pool_runs_workers_and_survives_fork(threaded: None, request) -> None:
    """The pool's workers really take part, and a forked child (no threads of its parent) starts its own."""
    import os

    from keydnn.backends.numba_cpu import cg_exec, cpu_pool

    if request.node.callspec.params["threaded"] != "native-pool":
        pytest.skip("native pool only")
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    check(g, randn(4, 1, 28, 28, seed=3), exe=exe)
    assert next(iter(exe._variants.values())).aot
    lib = cpu_pool._library()
    assert lib.keydnn_pool_workers() >= 2
    pid = os.fork()
    if pid == 0:  # the child: must compute correctly, not wait for workers that do not exist
        code = 1
        try:
            x = randn(3, 1, 28, 28, seed=4)
            ok = np.allclose(exe(x)[0], run_reference(g, x)[0], **TOL)
            code = 0 if ok and lib.keydnn_pool_workers() >= 2 else 1
        finally:
            os._exit(code)
    import signal
    import time

    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung calling the model")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert cg_exec._pool() is not None


def test_codegen_concurrent_callers_with_helper_threads(threaded: None) -> None:
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    inputs = [randn((1, 4)[i % 2], 1, 28, 28, seed=200 + i) for i in range(4)]
    expected = [run_reference(g, x)[0] for x in inputs]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                np.testing.assert_allclose(exe(inputs[i])[0], expected[i], **TOL)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_codegen_float64_and_unbatched_operand() -> None:
    g = seed_cnn("float64")
    exe = compile_graph(g, mode="codegen")
    assert exe.mode == "codegen"
    check(g, randn(3, 1, 28, 28, dtype="float64"), exe=exe, rtol=1e-10, atol=1e-12)
    # an operand with batch 1 broadcasts over the other's batch (its own compiled variant)
    g2 = graph_of([node("m", Add(), "a", "b")], {"a": (3, 4, 5), "b": (1, 4, 5)})
    check_many(g2, randn(3, 4, 5), randn(1, 4, 5), mode="codegen")
    check_many(g2, randn(2, 4, 5), randn(2, 4, 5), mode="codegen")


def test_codegen_large_batch_runs_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch larger than the chunk runs as several entry calls (a ragged last chunk included) writing into
    one output; a graph with an unbatched operand is never split."""
    from keydnn.backends.numba_cpu import cg_exec

    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    x = randn(11, 1, 28, 28, seed=3)
    monkeypatch.setenv("KEYDNN_CPU_CHUNK", "4")
    check(g, x, exe=exe)
    plans = exe._local.plans
    assert plans[((11, 1, 28, 28),)].chunk == 4 and plans[((11, 1, 28, 28),)].arena.size == 0
    assert {((4, 1, 28, 28),), ((3, 1, 28, 28),)} <= set(plans)
    prog = next(iter(exe._variants.values())).program
    assert cg_exec.batch_chunk(prog, (((1, 28, 28),), (False,))) >= 1 << 60
    monkeypatch.delenv("KEYDNN_CPU_CHUNK")
    per_sample = (prog.arena_per_sample + 784 + 10) * 4
    assert cg_exec.batch_chunk(prog, (((1, 28, 28),), (True,))) == max(cg_exec.MIN_CHUNK,
                                                                       cg_exec.CHUNK_BYTES // per_sample)


def test_codegen_fast_call_path_follows_shape_and_layout() -> None:
    """Repeated calls take a bound fast path for the last input shape; other shapes, a strided view, another
    dtype and a read-only array still give the reference result, and fresh outputs every call."""
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    ref = compile_graph(g, mode="ops")
    x2, x3 = randn(2, 1, 28, 28, seed=1), randn(3, 1, 28, 28, seed=2)
    wide = randn(2, 1, 28, 56, seed=3)
    readonly = randn(2, 1, 28, 28, seed=4)
    readonly.flags.writeable = False
    first = None
    for x in (x2, x2, x3, x2, wide[..., ::2], x2.astype(np.float64), readonly, x2):
        out = exe(x)[0]
        np.testing.assert_allclose(out, ref(np.ascontiguousarray(x, dtype=np.float32))[0], rtol=1e-5, atol=1e-6)
        if first is None:
            first = out
        else:
            assert out is not first
    if next(iter(exe._variants.values())).aot:  # the bound path exists for prebuilt entries
        assert exe._local.fast is not None and exe._local.fast[0] == (2, 1, 28, 28)


def test_array_address_matches_numpy() -> None:
    """The fast data-pointer read agrees with numpy for fresh arrays, slices, views and other dtypes."""
    from keydnn.backends.numba_cpu.cg_exec import array_address

    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    for a in (base, base[2:5], base[3], base.reshape(-1)[7:], np.empty((0, 3), np.float32), np.ones(5, np.int64)):
        assert array_address(a) == a.ctypes.data


def test_codegen_arena_is_aligned() -> None:
    """Arena buffers and thread scratch sit at 64-byte boundaries: a vector load across two cache lines costs
    two (numpy allocates at 16-byte boundaries only)."""
    exe = compile_graph(seed_cnn(), mode="codegen")
    exe(randn(2, 1, 28, 28))
    plan = next(iter(exe._local.plans.values()))
    prog = plan.var.program
    assert plan.arena.ctypes.data % 64 == 0
    assert prog.arena_per_sample % 16 == 0 and prog.arena_fixed % 16 == 0 and prog.scratch_per_thread % 16 == 0


def test_mode_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    g = make_graph([node("r", Relu(), "x")], (1, 4), layout="NC")
    assert compile_graph(g).mode == "codegen"
    monkeypatch.setenv("KEYDNN_CPU_MODE", "ops")
    assert compile_graph(g).mode == "ops"
    assert compile_graph(g, mode="codegen").mode == "codegen"
    monkeypatch.setenv("KEYDNN_CPU_MODE", "fast")
    with pytest.raises(BackendError, match="KEYDNN_CPU_MODE"):
        compile_graph(g)
    with pytest.raises(ValueError):
        compile_graph(g, mode="fast")


def test_codegen_source_has_shapes_as_literals() -> None:
    exe = compile_graph(seed_cnn(), mode="codegen")
    src = exe.source
    prog = next(iter(exe._variants.values())).program
    assert "def entry(" in src and prog.n_stages == 7
    # per-sample sizes are fixed numbers (in the stage functions' parameter tables); only the batch N is a variable
    assert 784 in prog.tables and 6272 in prog.tables


def test_generated_kernel_files_are_current() -> None:
    from keydnn.backends.numba_cpu import cg_thunks, ukernel_source

    assert ukernel_source.UKERNELS_PATH.read_text() == ukernel_source.render_ukernels(), \
        "regenerate with: python -m keydnn.backends.numba_cpu.ukernel_source"
    assert cg_thunks.THUNKS_PATH.read_text() == cg_thunks.render_thunks(), \
        "regenerate with: python -m keydnn.backends.numba_cpu.cg_thunks"


def test_cache_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("KEYDNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KEYDNN_CACHE", "0")
    g, x = conv_graph(1, 2, 5, 19, 3, (3, 3), seed=77)  # a structure no other test compiles
    check(g, x, exe=compile_graph(g, mode="codegen"))
    assert not (tmp_path / "cache").exists()


# -- the compile cache across processes -----------------------------------------------------------

_CHILD = r"""
import json, sys
import numpy as np
import keydnn
from keydnn.backends.numba_cpu import cg_cache
from keydnn.ir import run_reference
events = []
cg_cache.add_compile_listener(events.append)
model = keydnn.load({artifact!r})
x = np.random.default_rng(5).standard_normal((3, 1, 28, 28)).astype(np.float32)
np.testing.assert_allclose(model(x), run_reference(model.graph, x)[0], rtol=1e-5, atol=1e-5)
ends = [dict(e, numba="numba" in sys.modules) for e in events if e["event"] == "end"]
print("EVENTS", json.dumps(ends))
"""


def _child(cache_dir, *, wait: bool = True):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import keydnn

    artifact = Path(cache_dir).parent / "seed_cnn.json"
    if not artifact.exists():
        keydnn.Sequential(seed_cnn()).save(artifact)
    env = {**os.environ, "KEYDNN_CACHE_DIR": str(cache_dir), "KEYDNN_CACHE": "1"}
    for name in ("NUMBA_CACHE_DIR", "KEYDNN_AOT", "KEYDNN_CPU_MODE"):
        env.pop(name, None)
    code = _CHILD.format(artifact=str(artifact))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return _finish(proc) if wait else proc


def _finish(proc) -> list[dict]:
    import json

    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("EVENTS"))
    return json.loads(line.split(" ", 1)[1])


def _entry_dir(cache_dir):
    (entry,) = [d for d in (cache_dir / "numba-cpu").iterdir() if (d / "graph.py").exists()]
    return entry


def _loads(cache) -> tuple[bool, str, bool]:
    (event,) = _child(cache)
    return event["cached"], event["kind"], event["numba"]


@pytest.mark.slow
def test_cache_second_process_loads_and_damage_is_rebuilt(tmp_path) -> None:
    """A second process loads the compiled code (the prebuilt library, without numba, where a C compiler
    is at hand); a damaged entry is detected and rebuilt, never loaded."""
    from keydnn.backends.numba_cpu.cg_aot import compiler

    prebuilt = ("aot", False) if compiler() is not None else ("jit", True)
    cache = tmp_path / "cache"
    assert _loads(cache)[0] is False
    assert _loads(cache) == (True, *prebuilt)
    entry = _entry_dir(cache)
    numba_files = sorted((entry / "__pycache__").glob("graph.*"))
    assert any(p.suffix == ".nbi" for p in numba_files) and any(p.suffix == ".nbc" for p in numba_files)
    damages = {
        "truncated source": lambda: (entry / "graph.py").write_text((entry / "graph.py").read_text()[:200]),
        "bad index": lambda: next((entry / "__pycache__").glob("graph.*.nbi")).write_bytes(b"\x80\x04garbage"),
        "corrupt data": lambda: next((entry / "__pycache__").glob("graph.*.nbc")).write_bytes(b"\x00" * 64),
        "bad manifest": lambda: (entry / "manifest.json").write_text("{not json"),
    }
    for what, damage in damages.items():
        damage()
        assert _loads(cache)[0] is False, what
    if prebuilt[0] == "aot":  # a damaged library is ignored (numba's cache serves) and rebuilt
        (entry / "graph.so").write_bytes((entry / "graph.so").read_bytes()[:1000])
        assert _loads(cache) == (True, "jit", True)
    assert _loads(cache) == (True, *prebuilt)


def test_two_processes_compiling_one_graph_into_one_cache(tmp_path) -> None:
    cache = tmp_path / "cache"
    procs = [_child(cache, wait=False) for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert sorted(e["cached"] for r in results for e in r) in ([False, True], [False, False])
    from keydnn.backends.numba_cpu.cg_aot import compiler

    prebuilt = ("aot", False) if compiler() is not None else ("jit", True)
    assert _loads(cache) == (True, *prebuilt)


@pytest.mark.slow
def test_damaged_stored_thunk_is_rebuilt_not_linked(tmp_path) -> None:
    """Thunk objects are shared by cache entries; one whose object does not define its recorded symbol (what two
    processes writing object and name separately used to leave behind) is rebuilt, and the library loads."""
    from keydnn.backends.numba_cpu.cg_aot import compiler

    if compiler() is None:
        pytest.skip("no C compiler: no prebuilt libraries")
    cache = tmp_path / "cache"
    assert _loads(cache)[0] is False
    stored = sorted((cache / "numba-cpu" / "objects").glob("*.thunk"))
    assert stored
    for path in stored:  # keep the format, swap in a symbol no object defines
        head, name, rest = path.read_bytes().split(b"\n", 2)
        path.write_bytes(b"\n".join([head, name[:-3] + b"xyz", rest]))
    entry = _entry_dir(cache)
    (entry / "graph.so").unlink()
    (entry / "manifest.json").unlink()
    assert _loads(cache)[0] is False  # no manifest: compiled again, library linked from rebuilt thunks
    assert _loads(cache) == (True, "aot", False)


@pytest.mark.parametrize("case", [
    # C, H, W, KH, KW, sh, sw, dh, dw, pt, pl, p0, npix
    (3, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 0, 64),
    (2, 9, 7, 3, 2, 2, 2, 1, 1, 1, 0, 5, 10),
    (2, 10, 10, 3, 3, 1, 2, 2, 1, 2, 3, 3, 17),
    (1, 5, 6, 1, 1, 2, 3, 1, 1, 0, 0, 1, 3),
    (2, 4, 4, 3, 3, 1, 1, 1, 1, 3, 3, 7, 20),
])
def test_im2col_panel_matches_numpy(case: tuple) -> None:
    """The conv panel packer against a direct NumPy unfold, strips starting mid-row included."""
    from keydnn.backends.numba_cpu.cg_kernels import im2col_panel

    c, h, w, kh, kw, sh, sw, dh, dw, pt, pl = case[:11]
    p0, npix = case[11:]
    oh = (h + 2 * pt - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pl - dw * (kw - 1) - 1) // sw + 1
    x = randn(c, h, w, seed=5)
    ldp = npix + 3
    got = np.full(c * kh * kw * ldp + 8, np.nan, dtype=np.float32)
    im2col_panel(x.reshape(-1), 0, c, h, w, kh, kw, sh, sw, dh, dw, pt, pl, ow, p0, npix, got, 0, ldp)
    for ci in range(c):
        for ki in range(kh):
            for kj in range(kw):
                k = (ci * kh + ki) * kw + kj
                for j in range(npix):
                    oy, ox = divmod(p0 + j, ow)
                    assert oy < oh
                    iy, ix = oy * sh + ki * dh - pt, ox * sw + kj * dw - pl
                    want = x[ci, iy, ix] if 0 <= iy < h and 0 <= ix < w else 0.0
                    assert got[k * ldp + j] == want, (ci, ki, kj, j)


@pytest.mark.parametrize("case", [
    # C, H, W, pt, pb, pl, pr, r_lo, r_hi
    (3, 8, 8, 1, 1, 1, 1, 0, 10),
    (2, 5, 37, 2, 0, 0, 3, 1, 6),  # rows wider than two vectors, a masked tail
    (1, 4, 16, 0, 0, 0, 0, 0, 4),  # no padding: a plain copy
    (2, 3, 5, 3, 3, 2, 2, -2, 20),  # a row range past both ends is clipped
    (2, 6, 6, 1, 1, 1, 1, 4, 4),  # an empty range writes nothing
])
def test_pad_rows_matches_numpy(case: tuple) -> None:
    """The vectorized row padder against np.pad: requested rows padded, every other element untouched."""
    from keydnn.backends.numba_cpu.cg_kernels import pad_rows

    c, h, w, pt, pb, pl, pr, r_lo, r_hi = case
    hp, wp = h + pt + pb, w + pl + pr
    x = randn(c, h, w, seed=7)
    off = 5
    got = np.full(off + c * hp * wp + 16, np.nan, dtype=np.float32)
    pad_rows(x.reshape(-1), 0, c, h, w, got, off, hp, wp, pt, pl, r_lo, r_hi)
    want = np.full_like(got, np.nan)
    padded = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    view = want[off:off + c * hp * wp].reshape(c, hp, wp)
    lo, hi = max(r_lo, 0), min(r_hi, hp)
    view[:, lo:hi] = padded[:, lo:hi]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lanes,dtype", [(16, "float32"), (8, "float32"), (8, "float64"), (4, "float64")])
def test_vstore_transposed_writes_rows_by_columns(lanes: int, dtype: str) -> None:
    """The channel-vector conv tiles' store: lane l of vector m at index + m + l * stride, for m < rows and
    l < cols; tiles taller than a vector go in groups of L, and nothing outside the tile is written."""
    import numba

    from keydnn.backends.numba_cpu.simd import vload, vstore_transposed

    @numba.njit
    def store6(src, dst, index, stride, rows, cols):
        L = lanes
        vstore_transposed(dst, index, stride, rows, cols, vload(src, 0, L), vload(src, L, L), vload(src, 2 * L, L),
                          vload(src, 3 * L, L), vload(src, 4 * L, L), vload(src, 5 * L, L))

    for rows in (6, 5, 1, 0):
        for cols in (lanes, 3, 0):
            src = np.arange(1, 6 * lanes + 1).astype(dtype)
            got = np.zeros(900, dtype)
            store6(src, got, 7, 50, rows, cols)
            want = np.zeros(900, dtype)
            for m in range(rows):
                for lane in range(cols):
                    want[7 + m + lane * 50] = src[m * lanes + lane]
            np.testing.assert_array_equal(got, want, err_msg=f"rows={rows} cols={cols}")
