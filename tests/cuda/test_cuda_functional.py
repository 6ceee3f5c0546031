"""Functional (DAG) models on numba-cuda: the models of tests/test_functional.py, built as the Keras frontend
builds them (channels_last IR, no TensorFlow), through the default pipeline, against the reference and numba-cpu.

The Keras-built twins (compared with Keras itself) run from test_cuda_simulator.py, whose process may import
TensorFlow; this module runs on the simulator (or a GPU) and never does.
"""

from __future__ import annotations

import numpy as np
import pytest
from cuda_helpers import (  # noqa: F401  (fast_simulator: autouse fixture)
    assert_parity, compile_cuda, fast_simulator, seeded, skip_without_cuda,
)
from passes.builders import GraphBuilder

from keydnn.ir import Graph, run_reference
from keydnn.ir.ops import (
    Activation, Add, Avg, Concat, Conv2d, Dense, Flatten, GlobalAvgPool2d, Max, MaxPool2d, Min, Mul, Relu, Reshape,
    Softmax, Sub,
)
from keydnn.ir.passes import DEFAULT_PIPELINE, run_pipeline

skip_without_cuda()

GAP = GlobalAvgPool2d(layout="NHWC")


def _residual() -> Graph:
    b = GraphBuilder("residual", seed=1)
    x = b.input("image", ("N", 5, 5, 3), "NHWC")
    y = b.add(Relu(), b.bn(b.conv(x, 4, 3, padding="same", name="conv_a")), name="relu_a")
    y = b.bn(b.conv(y, 4, 3, padding="same", name="conv_b"))
    y = b.add(Add(), y, b.conv(x, 4, 1, name="proj"), name="add")
    y = b.add(GAP, b.add(Relu(), y, name="relu_out"))
    return b.build(b.dense(y, 4, name="head"))


def _inception() -> Graph:
    b = GraphBuilder("inception", seed=2)
    x = b.input("image", ("N", 4, 4, 4), "NHWC")
    b1 = b.conv(x, 3, 1, name="b1_1x1")
    b2 = b.conv(b.add(Relu(), b.conv(x, 2, 1, name="b2_1x1")), 4, 3, padding="same", name="b2_3x3")
    b3 = b.add(MaxPool2d(kernel=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), layout="NHWC"), x, name="b3_pool")
    b3 = b.conv(b3, 2, 1, name="b3_1x1")
    y = b.add(Relu(), b.add(Concat(axis=-1), b1, b2, b3, name="concat"))
    y = b.add(Flatten(), b.add(MaxPool2d(kernel=(2, 2), strides=(2, 2), layout="NHWC"), y))
    return b.build(b.dense(y, 5, name="head"))


def _two_inputs() -> Graph:
    b = GraphBuilder("two_inputs", seed=3)
    image, meta = b.input("image", ("N", 5, 5, 3), "NHWC"), b.input("meta", ("N", 5), "NC")
    a = b.add(GAP, b.conv(image, 6, 3, stride=2, name="conv"), name="gap")
    m = b.dense(meta, 6, name="meta_fc")
    y = b.add(Concat(axis=-1), b.add(Mul(), a, m, name="gate"), b.add(Sub(), a, m, name="diff"), meta)
    return b.build(b.dense(y, 3, name="head"))


def _two_outputs() -> Graph:
    b = GraphBuilder("two_outputs", seed=4)
    x = b.input("image", ("N", 4, 4, 3), "NHWC")
    t = b.add(Relu(), b.conv(x, 4, 3, padding="same", name="trunk"))
    c = b.add(Softmax(), b.dense(b.add(GAP, t), 4, name="classes"), name="probs")
    s = b.add(Avg(), b.conv(t, 2, 1, name="mask"), b.conv(t, 2, 3, padding="same", name="mask3"), name="avg")
    return b.build(c, s)


def _shared() -> Graph:
    """One Dense on two inputs, one Conv2D applied twice: one weight set, two nodes each."""
    b = GraphBuilder("shared", seed=5)
    xa, xb = b.input("a", ("N", 6), "NC"), b.input("b", ("N", 6), "NC")
    image = b.input("image", ("N", 4, 4, 4), "NHWC")
    fc = (b.rand("fc.kernel", (6, 4), scale=0.4), b.rand("fc.bias", (4,), scale=0.1))
    fa, fb = b.add(Dense(), xa, *fc, name="fc"), b.add(Dense(), xb, *fc, name="fc.1")
    v = b.add(Concat(axis=-1), b.add(Max(), fa, fb, name="max"), b.add(Min(), fa, fb, name="min"), name="vec")
    conv = Conv2d(pads=(1, 1, 1, 1), layout="NHWC")
    weights = (b.rand("conv.kernel", (4, 4, 3, 3), scale=0.15), b.rand("conv.bias", (4,), scale=0.1))
    y = b.add(conv, b.add(Relu(), b.add(conv, image, *weights, name="conv")), *weights, name="conv.1")
    y = b.add(GAP, b.add(Add(), y, image, name="res"))
    return b.build(v, b.dense(y, 2, name="head"))


def _squeeze_excite() -> Graph:
    """Multiply of an NHWC map by an (N, C) gate reshaped to (N, 1, 1, C), as the frontend lowers Keras's."""
    b = GraphBuilder("squeeze_excite", seed=6)
    x = b.input("image", ("N", 4, 4, 4), "NHWC")
    c = b.add(Relu(), b.conv(x, 8, 3, padding="same", name="conv"), name="relu")
    s = b.add(Relu(), b.dense(b.add(GAP, c, name="squeeze"), 2, name="fc1"))
    s = b.add(Activation(function="sigmoid"), b.dense(s, 8, name="fc2"), name="gate")
    y = b.add(Mul(), c, b.add(Reshape(shape=(1, 1, 8)), s), name="excite")
    y = b.add(Max(), y, b.conv(x, 8, 1, name="proj"), name="max")
    return b.build(b.dense(b.add(GAP, y), 3, name="head"))


def resnet_graph(size: int = 6) -> Graph:
    """tests/test_functional.py's tiny ResNet (stem, identity block, strided projection block, identity block),
    on a smaller image: conv-BN without bias, ReLU after each residual add, GAP, Dense, Softmax."""
    b = GraphBuilder("tiny_resnet", seed=7)

    def block(x: str, filters: int, stride: int, name: str) -> str:
        y = b.conv(x, filters, 3, stride=stride, padding="same", bias=False, name=f"{name}_conv1")
        y = b.add(Relu(), b.bn(y, name=f"{name}_bn1"))
        y = b.bn(b.conv(y, filters, 3, padding="same", bias=False, name=f"{name}_conv2"), name=f"{name}_bn2")
        if stride != 1 or b.shape(x)[-1] != filters:
            x = b.bn(b.conv(x, filters, 1, stride=stride, bias=False, name=f"{name}_down"), name=f"{name}_down_bn")
        return b.add(Relu(), b.add(Add(), y, x, name=f"{name}_add"), name=f"{name}_out")

    x = b.input("image", ("N", size, size, 3), "NHWC")
    y = b.add(Relu(), b.conv(x, 4, 3, padding="same", name="stem"))
    y = block(y, 4, 1, "block1")
    y = block(y, 8, 2, "block2")
    y = block(y, 8, 1, "block3")
    y = b.dense(b.add(GAP, y, name="gap"), 10, name="logits")
    return b.build(b.add(Softmax(), y, name="probs"))


MODELS = {
    "residual": _residual, "inception": _inception, "two_inputs": _two_inputs, "two_outputs": _two_outputs,
    "shared": _shared, "squeeze_excite": _squeeze_excite,
}


def _inputs(graph: Graph, batch: int = 2) -> list[np.ndarray]:
    rng = seeded()
    return [rng.normal(size=(batch, *v.type.shape[1:])).astype(np.float32) for v in graph.inputs]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_functional_model_through_the_default_pipeline(name):
    graph = run_pipeline(MODELS[name](), DEFAULT_PIPELINE)
    merges = [n for n in graph.nodes if n.op.kind in ("add", "sub", "mul", "avg", "max", "min", "concat")]
    assert merges, str(graph)
    assert_parity(graph, *_inputs(graph), atol=1e-4, cpu=False)  # numba-cpu: tests/test_functional.py


def test_tiny_resnet_matches_the_reference_within_1e_4_and_reuses_buffers():
    """Issue 8's done-when, without TensorFlow (the Keras-built twin runs from test_cuda_simulator.py)."""
    graph = run_pipeline(resnet_graph(), DEFAULT_PIPELINE)
    assert [n.op.kind for n in graph.nodes].count("add") == 3 and "batch_norm" not in str(graph)
    exe = compile_cuda(graph)
    xs = _inputs(graph)
    np.testing.assert_allclose(exe(*xs)[0], run_reference(graph, *xs)[0], rtol=1e-4, atol=1e-4)
    layout = exe._states[((2, 6, 6, 3),)].layout
    arena_steps = [p for p in layout.placements if p.kind == "arena"]
    assert len(layout.arena) < len(arena_steps)  # dead activations' buffers are reused along the DAG

