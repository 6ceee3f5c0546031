"""canonicalize-layout: channels_last graphs become channels-first compute with boundary transposes only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from keydnn.errors import PassError
from keydnn.ir import OP_CLASSES, Graph
from keydnn.ir.ops import (
    AvgPool2d, Crop2d, Dense, ExpandDims, Flatten, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d, Pad2d, PRelu,
    Relu, Reshape, ScaleShift, Softmax, Squeeze, Transpose, Upsample2d,
)
from keydnn.ir.passes import PROPERTIES, parse_pipeline, run_pipeline
from keydnn.ir.passes.canonicalize_layout import CanonicalizeLayout
from keydnn.ir.passes.layout_rules import LAYOUT_RULES

from ..builders import GraphBuilder, count
from ..harness import check_pass

HERE = Path(__file__).resolve().parent
PASS = "canonicalize-layout"
TO_NCHW = (0, 3, 1, 2)


def nhwc_cnn(name: str = "cnn") -> Graph:
    """Conv 'same' strided, BN, relu, depthwise conv, maxpool, flatten, dense, softmax: all channels_last."""
    b = GraphBuilder(name)
    x = b.input("x", ("N", 9, 9, 3), "NHWC")
    h = b.conv(x, 8, 3, stride=2, padding="same", name="conv1")
    h = b.bn(h, -1, name="bn1")
    h = b.add(Relu(), h, name="relu1")
    h = b.conv(h, 8, 3, padding="same", groups=8, name="dw")
    h = b.add(MaxPool2d(kernel=(2, 2), strides=(2, 2), layout="NHWC"), h, name="pool")
    h = b.add(Flatten(), h, name="flat")
    h = b.dense(h, 10, name="fc")
    return b.build(b.add(Softmax(axis=-1), h, name="softmax"))


def channels_last_ops(g: Graph) -> list[str]:
    return [n.name for n in g.nodes if getattr(n.op, "layout", None) in ("NHWC", "NWC") and n.op.kind != "transpose"]


def to_channels_first(name: str, x: np.ndarray) -> np.ndarray:
    return x.transpose((0, x.ndim - 1, *range(1, x.ndim - 1)))


def test_channels_last_cnn_keeps_one_input_transpose():
    g = nhwc_cnn()
    out = check_pass(g, PASS, HERE / "cnn_nhwc.txt")
    transposes = [n for n in out.nodes if n.op.kind == "transpose"]
    assert len(transposes) == 1 and transposes[0].inputs == ("x",) and transposes[0].op.perm == TO_NCHW
    assert not channels_last_ops(out) and PROPERTIES["channels-first"](out)
    assert out.inputs == g.inputs and out.output_types() == g.output_types()
    bn = next(n for n in out.nodes if n.op.kind == "batch_norm")
    assert bn.op.axis == 1
    fc = next(n for n in out.nodes if n.op.kind == "dense")
    assert fc.inputs[1] != "fc.kernel" and "fc.kernel" not in out.weights  # rows permuted, no transpose


def test_channels_first_input_removes_the_input_transpose():
    g = nhwc_cnn()
    out = check_pass(g, "canonicalize-layout{input-layout=channels_first}", HERE / "cnn_channels_first_input.txt",
                     feed=to_channels_first)
    assert count(out, "transpose") == 0
    assert out.inputs[0].type.shape == ("N", 3, 9, 9) and out.inputs[0].type.layout == "NCHW"


def test_spatial_output_gets_an_output_transpose():
    b = GraphBuilder("spatial")
    x = b.input("x", ("N", 8, 8, 2), "NHWC")
    h = b.conv(x, 4, 3, padding="same", name="conv1")
    h = b.add(Relu(), h, name="relu1")
    h = b.conv(h, 3, 3, stride=2, padding="same", name="conv2")
    g = b.build(h)
    out = check_pass(g, PASS, HERE / "spatial_output.txt")
    assert count(out, "transpose") == 2
    assert out.outputs == ("conv2",) and out.output_types() == g.output_types()


def test_softmax_on_last_axis_of_nhwc_is_remapped_to_channels():
    b = GraphBuilder("softmax_nhwc")
    x = b.input("x", ("N", 5, 5, 3), "NHWC")
    h = b.conv(x, 4, 1, name="conv1")
    g = b.build(b.add(Softmax(axis=-1), h, name="softmax"))
    out = check_pass(g, PASS, HERE / "softmax_last_axis.txt")
    assert next(n for n in out.nodes if n.op.kind == "softmax").op.axis == 1


def test_flatten_as_graph_output_is_transposed_first():
    b = GraphBuilder("flatten_out")
    x = b.input("x", ("N", 4, 4, 2), "NHWC")
    h = b.conv(x, 3, 3, name="conv1")
    g = b.build(b.add(Flatten(), h, name="flat"))
    out = check_pass(g, PASS, HERE / "flatten_output.txt")
    flat = next(n for n in out.nodes if n.op.kind == "flatten")
    assert out.value_types()[flat.inputs[0]].layout == "NHWC"


def test_flatten_folds_through_elementwise_ops_into_dense():
    b = GraphBuilder("flatten_relu_dense")
    x = b.input("x", ("N", 4, 4, 2), "NHWC")
    h = b.conv(x, 3, 3, name="conv1")
    h = b.add(Flatten(), h, name="flat")
    h = b.add(Relu(max_value=1.0), h, name="relu")
    g = b.build(b.dense(h, 5, name="fc"))
    out = check_pass(g, PASS, None)
    assert count(out, "transpose") == 1


def test_flatten_used_by_dense_and_output_keeps_logical_order():
    b = GraphBuilder("flatten_two_uses")
    x = b.input("x", ("N", 4, 4, 2), "NHWC")
    h = b.conv(x, 3, 3, name="conv1")
    f = b.add(Flatten(), h, name="flat")
    g = b.build(b.dense(f, 5, name="fc"), f)
    out = check_pass(g, PASS, None)
    assert "fc.kernel" in out.weights  # not permuted: the flatten is in Keras order
    assert count(out, "transpose") == 2


def test_conv1d_stack_in_nwc():
    """Conv1D / MaxPooling1D / GlobalAveragePooling1D lowered as expand_dims + 2-D op + squeeze."""
    b = GraphBuilder("conv1d")
    x = b.input("x", ("N", 16, 4), "NWC")
    h = b.add(ExpandDims(axis=1, layout="NHWC"), x, name="conv1.expand")
    h = b.conv(h, 6, (1, 3), padding="valid", name="conv1")
    h = b.add(Squeeze(axis=1, layout="NWC"), h, name="conv1.squeeze")
    h = b.add(Relu(), h, name="relu")
    h = b.add(ExpandDims(axis=1, layout="NHWC"), h, name="pool.expand")
    h = b.add(MaxPool2d(kernel=(1, 2), strides=(1, 2), layout="NHWC"), h, name="pool")
    h = b.add(Squeeze(axis=1, layout="NWC"), h, name="pool.squeeze")
    h = b.add(ExpandDims(axis=1, layout="NHWC"), h, name="gap.expand")
    h = b.add(GlobalAvgPool2d(layout="NHWC"), h, name="gap")
    g = b.build(b.dense(h, 3, name="fc"))
    out = check_pass(g, PASS, HERE / "conv1d_nwc.txt")
    assert count(out, "transpose") == 1 and not channels_last_ops(out)
    cf = check_pass(g, "canonicalize-layout{input-layout=channels_first}", None, feed=to_channels_first)
    assert count(cf, "transpose") == 0 and cf.inputs[0].type.layout == "NCW"


def test_conv1d_spatial_output_in_nwc():
    b = GraphBuilder("conv1d_out")
    x = b.input("x", ("N", 10, 3), "NWC")
    h = b.add(ExpandDims(axis=1, layout="NHWC"), x, name="conv1.expand")
    h = b.conv(h, 5, (1, 3), padding="same", name="conv1")
    g = b.build(b.add(Squeeze(axis=1, layout="NWC"), h, name="conv1.squeeze"))
    out = check_pass(g, PASS, None)
    assert count(out, "transpose") == 2


def test_weightless_spatial_ops_and_per_sample_parameters():
    b = GraphBuilder("spatial_ops")
    x = b.input("x", ("N", 6, 5, 3), "NHWC")
    h = b.add(Pad2d(pads=(1, 0, 2, 1), value=0.5, layout="NHWC"), x, name="pad")
    h = b.add(PRelu(), h, b.rand("prelu.alpha", (1, 1, 3), scale=0.2), name="prelu")
    h = b.add(Crop2d(crops=(0, 1, 1, 2), layout="NHWC"), h, name="crop")
    h = b.add(Upsample2d(factors=(2, 1), layout="NHWC"), h, name="up")
    h = b.add(ScaleShift(axis=None), h, b.rand("norm.scale", (12, 5, 3)), b.rand("norm.shift", (1, 5, 1)),
              name="norm")
    h = b.add(ScaleShift(axis=-1), h, b.rand("rescale.scale", (3,)), b.const("rescale.shift", np.array(0.5)),
              name="rescale")
    h = b.add(PRelu(), h, b.rand("prelu2.alpha", (12, 5, 3), scale=0.2), name="prelu2")
    h = b.add(AvgPool2d(kernel=(2, 2), strides=(1, 1), pads=(0, 1, 0, 1), layout="NHWC"), h, name="avg")
    g = b.build(b.add(GlobalMaxPool2d(keepdims=True, layout="NHWC"), h, name="gmp"))
    out = check_pass(g, PASS, HERE / "spatial_ops.txt")
    assert count(out, "transpose") == 2 and not channels_last_ops(out)


def test_existing_transposes_cancel_against_boundary_ones():
    b = GraphBuilder("user_transposes")
    x = b.input("x", ("N", 6, 6, 2), "NHWC")
    h = b.add(Transpose(perm=TO_NCHW, layout="NCHW"), x, name="to_nchw")
    h = b.conv(h, 3, 3, layout="NCHW", name="conv1")
    h = b.add(Transpose(perm=(0, 2, 3, 1), layout="NHWC"), h, name="to_nhwc")
    g = b.build(b.conv(h, 2, 1, name="conv2"))
    out = check_pass(g, PASS, HERE / "user_transposes.txt")
    assert count(out, "transpose") == 2


def test_layout_sensitive_ops_get_guarding_transposes():
    """Reshape and a dense over the channels of an image need the logical (NHWC) order."""
    b = GraphBuilder("guards")
    x = b.input("x", ("N", 4, 4, 2), "NHWC")
    h = b.conv(x, 3, 1, name="conv1")
    r = b.add(Reshape(shape=(16, 3)), h, name="reshape")
    d = b.dense(h, 5, name="per_pixel")
    g = b.build(r, d)
    out = check_pass(g, PASS, None)
    assert not channels_last_ops(out)


def test_input_of_unlabelled_layout_is_read_off_its_consumer():
    b = GraphBuilder("any_input")
    x = b.input("x", ("N", 5, 5, 2))
    g = b.build(b.add(GlobalAvgPool2d(layout="NHWC"), b.conv(x, 3, 3, name="conv1"), name="gap"))
    out = check_pass(g, "canonicalize-layout{input-layout=channels_first}", None, feed=to_channels_first)
    assert count(out, "transpose") == 0 and out.inputs[0].type.layout == "NCHW"


def test_channels_first_graph_is_returned_unchanged():
    b = GraphBuilder("nchw")
    x = b.input("x", ("N", 3, 8, 8), "NCHW")
    h = b.conv(x, 4, 3, padding="same", layout="NCHW", name="conv1")
    h = b.add(Softmax(axis=1), h, name="softmax")
    h = b.add(Reshape(shape=(4, 64), layout="ANY"), h, name="reshape")
    h = b.add(Flatten(), h, name="flat")
    g = b.build(b.dense(h, 3, name="fc"))
    result = CanonicalizeLayout().run(g)
    assert not result.changed and result.graph is g


def test_permute_before_flatten_dense_folds_into_the_weights():
    """A channels_first model that permutes to NHWC before Flatten (Keras Permute) loses the transpose."""
    b = GraphBuilder("permute_flatten")
    x = b.input("x", ("N", 3, 4, 4), "NCHW")
    h = b.conv(x, 4, 3, layout="NCHW", name="conv1")
    h = b.add(Transpose(perm=(0, 2, 3, 1), layout="NHWC"), h, name="permute")
    h = b.add(Flatten(), h, name="flat")
    g = b.build(b.dense(h, 3, name="fc"))
    out = check_pass(g, PASS, None)
    assert count(out, "transpose") == 0


def test_every_op_kind_has_a_layout_rule():
    assert set(OP_CLASSES) <= set(LAYOUT_RULES)


def test_bad_option_is_refused():
    with pytest.raises(PassError, match="input_layout"):
        parse_pipeline("canonicalize-layout{input-layout=nhwc}")
    with pytest.raises(PassError, match="does not take options"):
        parse_pipeline("canonicalize-layout{colour=red}")


def test_dense_only_graph_is_untouched_by_the_default_pipeline_layout_step():
    b = GraphBuilder("mlp")
    x = b.input("x", ("N", 6), "NC")
    g = b.build(b.dense(b.dense(x, 4, name="fc1"), 2, name="fc2"))
    assert run_pipeline(g, "canonicalize-layout") is g


def test_dense_layer_rule_leaves_plain_dense_alone():
    b = GraphBuilder("plain_dense")
    x = b.input("x", ("N", 4, 4, 2), "NHWC")
    h = b.add(GlobalAvgPool2d(layout="NHWC"), x, name="gap")
    g = b.build(b.add(Dense(), h, b.rand("w", (2, 3)), name="fc"))
    out = check_pass(g, PASS, None)
    assert next(n for n in out.nodes if n.op.kind == "dense").inputs[1] == "w"


def test_reshape_to_an_image_then_channels_last_convs():
    """Dense -> Reshape((H, W, C)) -> Conv2D: one transpose after the reshape, one before the output."""
    b = GraphBuilder("decoder")
    x = b.input("x", ("N", 4), "NC")
    h = b.add(Reshape(shape=(3, 3, 2), layout="NHWC"), b.dense(x, 18, name="fc"), name="reshape")
    h = b.conv(h, 3, 3, padding="same", name="conv1")
    g = b.build(b.add(Upsample2d(factors=(2, 2), layout="NHWC"), h, name="up"))
    out = check_pass(g, PASS, HERE / "decoder.txt")
    assert count(out, "transpose") == 2 and PROPERTIES["channels-first"](out)
