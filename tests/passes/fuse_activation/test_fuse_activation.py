"""fuse-activation: relu / activation after a conv2d or dense becomes that op's epilogue."""

from __future__ import annotations

from pathlib import Path

import pytest

from keydnn.ir.ops import ACTIVATION_FUNCTIONS, Activation, MaxPool2d, Relu
from keydnn.ir.passes.fuse_activation import FuseActivation

from ..builders import GraphBuilder
from ..harness import check_pass

HERE = Path(__file__).resolve().parent
PASS = "fuse-activation"


def test_conv_relu_with_parameters():
    b = GraphBuilder("conv_relu")
    x = b.input("x", ("N", 2, 6, 6), "NCHW")
    h = b.conv(x, 3, 3, layout="NCHW", name="conv1")
    g = b.build(b.add(Relu(max_value=0.5, negative_slope=0.1, threshold=0.05), h, name="relu1"))
    out = check_pass(g, PASS, HERE / "conv_relu.txt")
    assert [n.op.kind for n in out.nodes] == ["conv2d"]
    assert out.nodes[0].op.activation == Relu(max_value=0.5, negative_slope=0.1, threshold=0.05)
    assert out.outputs == ("conv1",)


def test_dense_activation_golden():
    b = GraphBuilder("dense_elu")
    x = b.input("x", ("N", 5), "NC")
    h = b.dense(x, 4, name="fc1")
    h = b.add(Activation(function="elu", alpha=0.3), h, name="elu")
    g = b.build(b.dense(h, 2, name="fc2"))
    check_pass(g, PASS, HERE / "dense_elu.txt")


@pytest.mark.parametrize("function", sorted(ACTIVATION_FUNCTIONS))
@pytest.mark.parametrize("producer", ["conv2d", "dense"])
def test_every_epilogue(function, producer):
    b = GraphBuilder(f"{producer}_{function}")
    if producer == "conv2d":
        h = b.conv(b.input("x", ("N", 2, 5, 5), "NCHW"), 3, 3, layout="NCHW", name="p")
    else:
        h = b.dense(b.input("x", ("N", 5), "NC"), 4, name="p")
    g = b.build(b.add(Activation(function=function, alpha=0.7), h, name="act"))
    out = check_pass(g, PASS, None)
    assert len(out.nodes) == 1 and out.nodes[0].op.activation == Activation(function=function, alpha=0.7)


def test_not_fused_when_the_producer_result_is_used_twice():
    b = GraphBuilder("two_uses")
    h = b.dense(b.input("x", ("N", 5), "NC"), 4, name="fc")
    g = b.build(b.add(Relu(), h, name="relu"), h)
    result = FuseActivation().run(g)
    assert not result.changed and result.graph is g


def test_not_fused_twice_or_into_ops_without_an_epilogue():
    b = GraphBuilder("no_fuse")
    x = b.input("x", ("N", 2, 6, 6), "NCHW")
    h = b.conv(x, 3, 3, layout="NCHW", name="conv1", activation=Relu())
    h = b.add(Activation(function="tanh"), h, name="tanh")
    h = b.add(MaxPool2d(kernel=(2, 2), strides=(2, 2)), h, name="pool")
    g = b.build(b.add(Relu(), h, name="relu"))
    assert FuseActivation().run(g).graph is g


def test_chain_of_two_pairs():
    b = GraphBuilder("two_pairs")
    h = b.dense(b.input("x", ("N", 5), "NC"), 4, name="fc1")
    h = b.add(Relu(), h, name="relu1")
    h = b.dense(h, 3, name="fc2")
    h = b.add(Activation(function="sigmoid"), h, name="sig")
    g = b.build(b.add(Relu(), h, name="relu2"))
    out = check_pass(g, PASS, None)
    assert [n.op.kind for n in out.nodes] == ["dense", "dense", "relu"]
