"""Generated CPU code for issue 18's tensor math (backends/numba_cpu/codegen/emit_tensor.py): matmul, bias_softmax,
layer_norm, reduce, unary, binary, slice and resize2d, each against the NumPy reference interpreter on
random graphs with odd sizes, and transformer / normalization / resizing models against Keras, all on
the codegen path (never the per-op fallback). ``test_forced_tiers`` reruns the reference checks with the
AVX2 and generic code-generation tiers forced (fresh processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keydnn.backends.numba_cpu import compile_graph
from keydnn.backends.numba_cpu.codegen import target as target_mod
from keydnn.backends.numba_cpu.codegen.target import ENV, TIERS
from keydnn.ir import Graph, Node, TensorType, Value, run_reference
from keydnn.ir.ops.math import BINARY_FUNCTIONS, UNARY_FUNCTIONS, BiasSoftmax, Binary, MatMul, Slice, Unary
from keydnn.ir.ops.reduce import LayerNorm, Reduce
from keydnn.ir.ops.resize import Resize2d
from keydnn.ir.passes import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
TOL = {"rtol": 2e-5, "atol": 2e-5}


def _graph(inputs: dict[str, tuple[int, ...]], nodes: list[Node], weights: dict | None = None,
           dtype: str = "float32", layout: str = "ANY") -> Graph:
    g = Graph.build(
        name="t",
        inputs=tuple(Value(name=k, type=TensorType(shape=("N",) + tuple(s), dtype=dtype, layout=layout))
                     for k, s in inputs.items()),
        outputs=(nodes[-1].outputs[0].name,), nodes=tuple(nodes),
        weights={k: np.asarray(v, dtype=dtype) for k, v in (weights or {}).items()},
    )
    return run_pipeline(g, "infer-shapes")


def _node(name: str, op, *inputs: str) -> Node:
    return Node(name=name, op=op, inputs=tuple(inputs), outputs=(Value(name=name),))


def _rand(shape, seed=0, dtype="float32", positive=False):
    r = np.random.default_rng(seed).standard_normal(shape)
    return (np.abs(r) + 0.1 if positive else r).astype(dtype)


def _check(graph: Graph, xs: list[np.ndarray], tol: dict | None = None) -> None:
    """The generated code (never the per-op path) == the reference interpreter."""
    exe = compile_graph(graph, mode="codegen")
    assert exe.mode == "codegen", "the graph fell back to the per-op kernels"
    got, want = exe(*xs), run_reference(graph, *xs)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, equal_nan=True, **(tol or TOL))


# -- matmul ----------------------------------------------------------------------------------------------------
MATMULS = [  # x sample, y sample (or a constant's full shape, "c:" prefix), transpose_b, scale
    ((5, 7), (7, 3), False, 1.0),
    ((17, 33), (65, 33), True, 0.25),
    ((4, 64, 32), (4, 64, 32), True, 0.17677),
    ((4, 64, 64), (4, 64, 32), False, 1.0),
    ((3, 9, 20), (1, 20, 37), False, 1.0),  # leading axis broadcast
    ((2, 3, 6, 5), (1, 3, 5, 4), False, 2.0),  # leading axes broadcast
    ((2, 3, 6, 5), "c:3,5,4", False, 2.0),  # a constant of lower rank (batch broadcast over it)
    ((2, 11, 13), "c:13,70", False, 1.0),  # constant right operand
    ("c:6,9", (9, 19), False, 1.0),  # constant left operand
    ((1, 1), (1, 129), False, 1.0),
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", MATMULS, ids=[str(i) for i in range(len(MATMULS))])
def test_matmul(case, batch):
    xs_, ys_, tb, scale = case
    inputs, weights, names, feeds = {}, {}, [], []
    for k, (name, s) in enumerate((("x", xs_), ("y", ys_))):
        if isinstance(s, str):
            weights[name] = _rand(tuple(int(d) for d in s[2:].split(",")), seed=10 + k)
        else:
            inputs[name] = s
        names.append(name)
    for k, (name, s) in enumerate(inputs.items()):
        feeds.append(_rand((batch,) + s, seed=k))
    g = _graph(inputs, [_node("mm", MatMul(transpose_b=tb, scale=scale), *names)], weights)
    _check(g, feeds, {"rtol": 1e-4, "atol": 1e-4})


# -- normalization and reductions -----------------------------------------------------------------------------------
LAYER_NORMS = [  # sample, axes, statistic, eps_mode, center, param shape (None: scalar)
    ((64, 128), (2,), "variance", "add", True, (1, 128)),
    ((5, 7), (-1,), "mean_square", "add", False, (1, 7)),
    ((3, 4, 5), (2, 3), "variance", "add", True, (1, 4, 5)),
    ((6, 4, 5), (1,), "variance", "add", True, (6, 1, 1)),  # a channels-first axis
    ((3, 4, 5), (1, 3), "sum_square", "max", False, None),
    ((2, 3, 4, 5), (1, 2, 3, 4), "variance", "add", True, None),
]


@pytest.mark.parametrize("case", LAYER_NORMS, ids=[str(i) for i in range(len(LAYER_NORMS))])
def test_layer_norm(case):
    sample, axes, stat, eps_mode, center, pshape = case
    gamma = _rand(pshape or (), seed=3) if pshape else np.float32(1.5)
    beta = _rand(pshape or (), seed=4) if pshape else np.float32(-0.25)
    op = LayerNorm(axes=axes, epsilon=1e-3, statistic=stat, eps_mode=eps_mode, center=center)
    g = _graph({"x": sample}, [_node("ln", op, "x", "g", "b")], {"g": gamma, "b": beta})
    _check(g, [_rand((3,) + sample, seed=1) * 3 + 1])


@pytest.mark.parametrize("mode", ["mean", "sum", "max", "min"])
@pytest.mark.parametrize("axes,keep", [((1,), False), ((3,), True), ((1, 3), False), ((2, 3), True), ((1, 2, 3), False)])
def test_reduce(mode, axes, keep):
    g = _graph({"x": (3, 5, 7)}, [_node("r", Reduce(mode=mode, axes=axes, keepdims=keep), "x")])
    _check(g, [_rand((2, 3, 5, 7))])


# -- elementwise -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("function", sorted(UNARY_FUNCTIONS))
def test_unary(function):
    a, b = {"clip": (-0.5, 0.7), "squareplus": (4.0, 0.0), "celu": (1.5, 0.0), "threshold": (0.3, -2.0),
            "soft_shrink": (0.5, 0.0), "hard_shrink": (0.5, 0.0)}.get(function, (0.0, 0.0))
    positive = function in ("sqrt", "rsqrt", "log", "log1p")
    g = _graph({"x": (3, 37)}, [_node("u", Unary(function=function, a=a, b=b), "x")])
    _check(g, [_rand((2, 3, 37), positive=positive) * (1 if positive else 3)])


BROADCASTS = [  # x, y (sample shapes; "c:" a constant's full shape)
    ((4, 5), (4, 5)),
    ((4, 5), (1, 5)),
    ((3, 1), (1, 6)),
    ((4, 5), "c:5"),
    ((4, 5), "c:4,1"),
    ("c:", (2, 3, 4)),
    ((2, 1, 7), "c:1,1,3,7"),
]


@pytest.mark.parametrize("function", BINARY_FUNCTIONS)
@pytest.mark.parametrize("case", BROADCASTS, ids=[str(i) for i in range(len(BROADCASTS))])
def test_binary(function, case):
    inputs, weights, names = {}, {}, []
    for k, (name, s) in enumerate(zip(("x", "y"), case)):
        if isinstance(s, str):
            dims = tuple(int(d) for d in s[2:].split(",") if d)
            weights[name] = np.round(_rand(dims, seed=20 + k) * 2) / 2 if dims else np.float32(0.5)
        else:
            inputs[name] = s
        names.append(name)
    feeds = [np.round(_rand((3,) + s, seed=k) * 2) / 2 for k, s in enumerate(inputs.values())]  # ties for ==
    if function == "pow":
        feeds = [np.abs(f) + 0.5 for f in feeds]
        weights = {k: np.abs(v) + 0.5 for k, v in weights.items()}
    g = _graph(inputs, [_node("b", Binary(function=function), *names)], weights)
    _check(g, feeds)


@pytest.mark.parametrize("biases", ["const", "const+input", "input"])
def test_bias_softmax(biases):
    inputs = {"x": (3, 5, 70)}
    weights, names = {}, ["x"]
    if biases.startswith("const"):
        causal = np.triu(np.full((5, 70), -1e9, np.float32), 1)
        weights["c"], names = causal, names + ["c"]
    if biases.endswith("input"):
        inputs["m"] = (1, 5, 70)
        names.append("m")
    g = _graph(inputs, [_node("s", BiasSoftmax(), *names)], weights)
    feeds = [_rand((2,) + s, seed=k) * 4 for k, s in enumerate(inputs.values())]
    _check(g, feeds)


# -- data movement ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("starts,stops,steps", [((0, 1, 2), (5, 6, 9), (1, 1, 1)), ((1, 0, 3), (4, 7, 9), (2, 3, 2)),
                                                ((4, 2, 0), (5, 3, 9), (1, 1, 4))])
def test_slice(starts, stops, steps):
    g = _graph({"x": (5, 7, 9)}, [_node("s", Slice(starts=starts, stops=stops, steps=steps), "x")])
    _check(g, [_rand((2, 5, 7, 9))])


@pytest.mark.parametrize("method", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize("half_pixel", [True, False])
@pytest.mark.parametrize("layout,size", [("NCHW", (13, 6)), ("NHWC", (4, 17))])
def test_resize2d(method, half_pixel, layout, size):
    sample = (3, 7, 9) if layout == "NCHW" else (7, 9, 3)
    op = Resize2d(size=size, method=method, half_pixel=half_pixel, layout=layout)
    g = _graph({"x": sample}, [_node("r", op, "x")], layout=layout)
    _check(g, [_rand((2,) + sample)])


def test_attention_chain_float64():
    """scores -> masked softmax -> context in float64 (tile kernels of 8 lanes), several emitters in a row."""
    inputs = {"q": (2, 9, 6), "k": (2, 11, 6), "v": (2, 11, 5)}
    nodes = [_node("s", MatMul(transpose_b=True, scale=0.4), "q", "k"), _node("p", BiasSoftmax(), "s", "c"),
             _node("o", MatMul(), "p", "v")]
    g = _graph(inputs, nodes, {"c": np.triu(np.full((9, 11), -1e9), 1)}, dtype="float64")
    _check(g, [_rand((3,) + s, seed=k, dtype="float64") for k, s in enumerate(inputs.values())],
           {"rtol": 1e-10, "atol": 1e-10})


# -- Keras models on the codegen path ------------------------------------------------------------------------------
def _keras_check(model, xs, **options):
    import keydnn
    from parity_helpers import keras_outputs

    ours = keydnn.from_keras(model, **options)
    assert ours._compile().mode == "codegen", "the model fell back to the per-op kernels"
    got = ours(*xs)
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    for g, w in zip(got, keras_outputs(model, xs), strict=True):
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-4, atol=1e-4)


@pytest.mark.keras
def test_transformer_block_with_causal_mask():
    import keras

    L = keras.layers
    x = keras.Input((12, 16))
    a = L.MultiHeadAttention(4, 4)(x, x, use_causal_mask=True)
    h = L.LayerNormalization(epsilon=1e-6)(L.Add()([x, a]))
    f = keras.ops.gelu(L.Dense(32)(h), approximate=True)
    h = L.LayerNormalization(epsilon=1e-6)(L.Add()([h, L.Dense(16)(f)]))
    model = keras.Model(x, L.Dense(3)(L.GlobalAveragePooling1D()(h)))
    _keras_check(model, [_rand((3, 12, 16))], allow_non_linear_activation=True)


@pytest.mark.keras
def test_mha_cross_attention_with_mask():
    import keras

    q, v, m = keras.Input((5, 8)), keras.Input((7, 6)), keras.Input((5, 7))
    out = keras.layers.MultiHeadAttention(2, 4, value_dim=3, output_shape=10)(q, v, attention_mask=m)
    model = keras.Model([q, v, m], out)
    mask = (np.random.default_rng(5).random((2, 5, 7)) > 0.3).astype("f4")
    mask[:, :, 0] = 1.0
    _keras_check(model, [_rand((2, 5, 8)), _rand((2, 7, 6), seed=1), mask])


@pytest.mark.keras
@pytest.mark.parametrize("config", [dict(), dict(axis=(1, 2)), dict(center=False), dict(scale=False),
                                    dict(rms_scaling=True), dict(axis=1)])
def test_layer_normalization_variants(config):
    import keras

    x = keras.Input((6, 5, 4))
    layer = keras.layers.LayerNormalization(epsilon=1e-3, **config)
    model = keras.Model(x, layer(x))
    layer.set_weights([np.random.default_rng(k).normal(size=w.shape).astype("f4")
                       for k, w in enumerate(layer.get_weights())])
    _keras_check(model, [_rand((2, 6, 5, 4)) * 2 + 1])


@pytest.mark.keras
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest", "bicubic"])
def test_resizing(interpolation):
    import keras

    model = keras.Sequential([keras.Input((9, 7, 3)), keras.layers.Resizing(12, 5, interpolation=interpolation),
                              keras.layers.UpSampling2D(2, interpolation="bilinear")])
    _keras_check(model, [_rand((2, 9, 7, 3))])


@pytest.mark.keras
@pytest.mark.slow
def test_benchmark_models_take_the_codegen_path():
    """benchmarks/bench_models_vit_unet.py's ViT encoder and U-Net run as generated code and match Keras."""
    import keras

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_models_vit_unet import unet64, vit_encoder
    finally:
        sys.path.pop(0)
    for build in (vit_encoder, unet64):
        model = build(keras)
        _keras_check(model, [_rand((2,) + tuple(model.input_shape[1:]))], allow_non_linear_activation=True)


# -- the narrower tiers --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("tier", ["avx2", "generic"])
def test_forced_tiers(tier, tmp_path):
    """This file's reference checks in a fresh process with the tier forced (tiles and lanes from the tier)."""
    if tier != "generic" and not TIERS[tier].requires <= target_mod._cpu_features():
        pytest.skip(f"this CPU lacks the {tier} tier")
    env = {**os.environ, ENV: tier, "KEYDNN_CACHE_DIR": str(tmp_path / "cache")}
    selection = "test_matmul or test_layer_norm or test_bias_softmax or test_attention_chain or test_resize2d"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-n", "0", "-p",
                           "no:cacheprovider", "-m", "not slow", "-k", selection], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
