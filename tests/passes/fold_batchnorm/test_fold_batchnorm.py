"""fold-batchnorm: into the producer, else the consumer when exact, else a scale_shift."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keydnn.ir.ops import Flatten, GlobalAvgPool2d, Relu
from keydnn.ir.passes.fold_batchnorm import FoldBatchNorm

from ..builders import GraphBuilder, count
from ..harness import check_pass

HERE = Path(__file__).resolve().parent
PASS = "fold-batchnorm"


def image(b: GraphBuilder, c: int = 3, layout: str = "NCHW") -> str:
    shape = ("N", c, 7, 7) if layout == "NCHW" else ("N", 7, 7, c)
    return b.input("x", shape, layout)


def test_into_preceding_conv():
    b = GraphBuilder("bn_after_conv")
    h = b.conv(image(b), 4, 3, padding="same", layout="NCHW", name="conv1")
    g = b.build(b.bn(h, 1, name="bn1"))
    out = check_pass(g, PASS, HERE / "into_preceding_conv.txt")
    assert [n.op.kind for n in out.nodes] == ["conv2d"] and out.outputs == ("conv1",)


@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False), (False, False)])
def test_center_and_scale_off(center, scale):
    b = GraphBuilder("bn_flags")
    h = b.conv(image(b), 4, 3, layout="NCHW", bias=False, name="conv1")
    g = b.build(b.bn(h, 1, center=center, scale=scale, name="bn1"))
    golden = HERE / "center_scale_off.txt" if not (center or scale) else None
    out = check_pass(g, PASS, golden)
    assert count(out, "batch_norm") == 0 and count(out, "scale_shift") == 0


def test_into_preceding_depthwise_conv():
    b = GraphBuilder("bn_after_depthwise")
    h = b.conv(image(b, 4), 8, 3, groups=4, layout="NCHW", name="dw")
    g = b.build(b.bn(h, 1, name="bn1"))
    out = check_pass(g, PASS, None)
    assert [n.op.kind for n in out.nodes] == ["conv2d"]


def test_into_preceding_channels_last_conv():
    b = GraphBuilder("bn_nhwc")
    h = b.conv(image(b, layout="NHWC"), 4, 3, layout="NHWC", name="conv1")
    g = b.build(b.bn(h, -1, name="bn1"))
    out = check_pass(g, PASS, None)
    assert [n.op.kind for n in out.nodes] == ["conv2d"]


def test_into_preceding_dense():
    b = GraphBuilder("bn_after_dense")
    x = b.input("x", ("N", 6), "NC")
    g = b.build(b.bn(b.dense(x, 5, name="fc"), -1, name="bn1"))
    out = check_pass(g, PASS, HERE / "into_preceding_dense.txt")
    assert [n.op.kind for n in out.nodes] == ["dense"]


def test_into_following_unpadded_conv():
    b = GraphBuilder("bn_before_conv")
    h = b.bn(image(b), 1, name="bn0")
    g = b.build(b.conv(h, 4, 3, layout="NCHW", name="conv1"))
    out = check_pass(g, PASS, HERE / "into_following_conv.txt")
    assert [n.op.kind for n in out.nodes] == ["conv2d"] and out.nodes[0].inputs[0] == "x"


def test_into_following_grouped_conv():
    b = GraphBuilder("bn_before_grouped")
    h = b.bn(image(b, 4), 1, name="bn0")
    g = b.build(b.conv(h, 6, 3, groups=2, layout="NCHW", bias=False, name="gconv"))
    out = check_pass(g, PASS, None)
    assert [n.op.kind for n in out.nodes] == ["conv2d"]


def test_into_following_dense():
    b = GraphBuilder("bn_before_dense")
    h = b.add(Flatten(), image(b), name="flat")
    h = b.bn(h, -1, name="bn0")
    g = b.build(b.dense(h, 3, name="fc"))
    out = check_pass(g, PASS, None)
    assert [n.op.kind for n in out.nodes] == ["flatten", "dense"]


def test_padded_conv_after_is_refused_and_lowered_to_scale_shift():
    b = GraphBuilder("bn_before_padded_conv")
    h = b.bn(image(b), 1, name="bn0")
    g = b.build(b.conv(h, 4, 3, padding="same", layout="NCHW", name="conv1"))
    out = check_pass(g, PASS, HERE / "padded_conv_refused.txt")
    assert [n.op.kind for n in out.nodes] == ["scale_shift", "conv2d"]


def test_padded_conv_after_folds_when_the_shift_is_zero():
    b = GraphBuilder("bn_zero_shift")
    x = image(b)
    names = [b.const("bn0.moving_mean", np.zeros(3)), b.rand("bn0.moving_variance", (3,), low=0.5),
             b.rand("bn0.gamma", (3,), low=0.5), b.const("bn0.beta", np.zeros(3))]
    from keydnn.ir.ops import BatchNorm

    h = b.add(BatchNorm(axis=1), x, *names, name="bn0")
    g = b.build(b.conv(h, 4, 3, padding="same", layout="NCHW", name="conv1"))
    out = check_pass(g, PASS, None)
    assert [n.op.kind for n in out.nodes] == ["conv2d"]


def test_nothing_to_fold_into_becomes_scale_shift():
    b = GraphBuilder("bn_alone")
    h = b.add(Relu(), image(b), name="relu")
    h = b.bn(h, 1, name="bn1")
    g = b.build(b.add(GlobalAvgPool2d(), h, name="gap"))
    out = check_pass(g, PASS, HERE / "lowered_to_scale_shift.txt")
    assert [n.op.kind for n in out.nodes] == ["relu", "scale_shift", "global_avg_pool2d"]


def test_producer_with_two_users_is_not_folded_into():
    b = GraphBuilder("bn_shared_producer")
    c = b.conv(image(b), 4, 3, layout="NCHW", name="conv1")
    g = b.build(b.bn(c, 1, name="bn1"), c)
    out = check_pass(g, PASS, None)
    assert "scale_shift" in [n.op.kind for n in out.nodes]
    assert "conv1.kernel" in out.weights


def test_producer_with_fused_activation_is_not_folded_into():
    b = GraphBuilder("bn_after_fused")
    c = b.conv(image(b), 4, 3, layout="NCHW", name="conv1", activation=Relu())
    g = b.build(b.bn(c, 1, name="bn1"))
    out = check_pass(g, PASS, None)
    assert [n.op.kind for n in out.nodes] == ["conv2d", "scale_shift"]


def test_consecutive_batch_norms():
    b = GraphBuilder("bn_chain")
    h = b.conv(image(b), 4, 3, layout="NCHW", name="conv1")
    h = b.bn(h, 1, name="bn1")
    h = b.bn(h, 1, name="bn2")
    g = b.build(b.add(Relu(), h, name="relu"))
    out = check_pass(g, PASS, None)
    assert [n.op.kind for n in out.nodes] == ["conv2d", "relu"]


def test_graph_without_batch_norm_is_unchanged():
    b = GraphBuilder("no_bn")
    g = b.build(b.conv(image(b), 4, 3, layout="NCHW", name="conv1"))
    result = FoldBatchNorm().run(g)
    assert not result.changed and result.graph is g
