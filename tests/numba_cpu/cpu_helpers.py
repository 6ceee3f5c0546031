"""Helpers of the numba-cpu tests: small graphs, random data, the reference check in every mode."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import numpy as np

from keydnn.backends.numba_cpu import NumbaCpuExecutable, compile_graph
from keydnn.backends.numba_cpu.codegen import emit_conv as cg_emit_conv
from keydnn.ir import Graph, Node, TensorType, Value, run_reference
from keydnn.ir.ops import (
    Activation,
    Conv2d,
    Dense,
    GlobalAvgPool2d,
    MaxPool2d,
    Relu,
    Softmax,
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


#: Every way a conv2d runs: the per-op mode (a one-node generated program per node), and the generated code
#: (which picks implicit GEMM, channel-vector tiles or an im2col panel, or direct loops for grouped filters,
#: by shape), also with each GEMM form forced where it applies.
CONV_PATHS = ("ops", "codegen") + tuple(f"codegen:{f}" for f in cg_emit_conv.CONV_FORMS)


def conv_form(name: Optional[str]):
    """Force one GEMM form of the generated conv2d code while code is generated: when the executable is made
    (static sample shapes) or at a shape's first call. (The forced-form tests ran the default form while the
    form was only forced around calls.)"""
    return patched(cg_emit_conv, "FORCE_CONV_FORM", name)


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
