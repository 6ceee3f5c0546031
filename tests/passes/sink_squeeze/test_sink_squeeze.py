"""sink-squeeze: 1-D layers' squeezes move below per-element / per-channel ops."""

from __future__ import annotations

from pathlib import Path

from keydnn.ir.ops import Activation, ExpandDims, PRelu, Relu, ScaleShift, Softmax, Squeeze
from keydnn.ir.passes.sink_squeeze import SINK_RULES, SinkSqueeze

from ..builders import GraphBuilder, kinds
from ..harness import check_pass

HERE = Path(__file__).resolve().parent
PASS = "sink-squeeze"


def conv1d(b: GraphBuilder, h: str, out_ch: int, name: str) -> str:
    """Conv1D in NCW, as the frontend lowers it."""
    h = b.add(ExpandDims(axis=2, layout="NCHW"), h, name=f"{name}.expand")
    h = b.conv(h, out_ch, (1, 3), layout="NCHW", name=name)
    return b.add(Squeeze(axis=2, layout="NCW"), h, name=f"{name}.squeeze")


def test_conv1d_bn_relu_conv1d():
    b = GraphBuilder("conv1d_bn_relu")
    h = conv1d(b, b.input("x", ("N", 3, 12), "NCW"), 4, "conv1")
    h = b.bn(h, 1, name="bn1")
    h = b.add(Relu(), h, name="relu1")
    g = b.build(conv1d(b, h, 2, "conv2"))
    out = check_pass(g, PASS, HERE / "conv1d_bn_relu.txt")
    assert kinds(out)[:4] == ["expand_dims", "conv2d", "batch_norm", "relu"]
    full = check_pass(g, "sink-squeeze,fold-batchnorm,fold-constants,fuse-activation,eliminate-identity", None)
    assert kinds(full) == ["expand_dims", "conv2d", "conv2d", "squeeze"]


def test_axes_and_per_sample_parameters_follow_the_restored_axis():
    b = GraphBuilder("sink_params")
    h = conv1d(b, b.input("x", ("N", 3, 9), "NCW"), 4, "conv1")
    h = b.add(Softmax(axis=-1), h, name="softmax")
    h = b.add(ScaleShift(axis=None), h, b.rand("ss.scale", (4, 7)), b.rand("ss.shift", (1, 7)), name="ss")
    h = b.add(ScaleShift(axis=-2), h, b.rand("ss2.scale", (4,)), b.rand("ss2.shift", (1,)), name="ss2")
    h = b.add(PRelu(), h, b.rand("alpha", (4, 1), scale=0.2), name="prelu")
    g = b.build(b.add(Activation(function="tanh"), h, name="tanh"))
    out = check_pass(g, PASS, HERE / "params.txt")
    assert kinds(out)[-1] == "squeeze"


def test_squeeze_with_two_uses_stays():
    b = GraphBuilder("two_uses")
    h = conv1d(b, b.input("x", ("N", 3, 9), "NCW"), 4, "conv1")
    g = b.build(b.add(Relu(), h, name="relu"), h)
    assert SinkSqueeze().run(g).graph is g


def test_rules_cover_only_ops_that_commute_with_squeeze():
    assert set(SINK_RULES) == {"relu", "activation", "softmax", "batch_norm", "scale_shift", "prelu"}
