"""The default pipeline end to end: goldens, idempotence, and generated channels_last conv stacks."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keydnn.ir import Graph
from keydnn.ir.ops import (
    AvgPool2d, ExpandDims, Flatten, GlobalAvgPool2d, GlobalMaxPool2d, MaxPool2d, Pad2d, Relu, Activation, Softmax,
    Squeeze, Upsample2d,
)
from keydnn.ir.passes import DEFAULT_PIPELINE, PROPERTIES, PassManager

from ..builders import GraphBuilder, assert_same_numerics, count, kinds
from ..canonicalize_layout.test_canonicalize_layout import nhwc_cnn
from ..harness import check_pass

HERE = Path(__file__).resolve().parent


def test_default_pipeline_on_a_channels_last_cnn():
    out = check_pass(nhwc_cnn(), DEFAULT_PIPELINE, HERE / "cnn_nhwc_default.txt")
    assert count(out, "transpose") == 1 and count(out, "batch_norm") == 0 and count(out, "relu") == 0
    assert PROPERTIES["channels-first"](out)


def test_default_pipeline_with_channels_first_input():
    spec = DEFAULT_PIPELINE.replace("canonicalize-layout", "canonicalize-layout{input-layout=channels_first}")
    out = check_pass(nhwc_cnn(), spec, None, feed=lambda k, x: x.transpose(0, 3, 1, 2))
    assert count(out, "transpose") == 0


def test_default_pipeline_on_a_conv1d_stack_keeps_one_expand_squeeze_pair():
    b = GraphBuilder("conv1d")
    x = b.input("x", ("N", 16, 4), "NWC")
    h = x
    for i in range(2):
        h = b.add(ExpandDims(axis=1, layout="NHWC"), h, name=f"conv{i}.expand")
        h = b.conv(h, 5, (1, 3), padding="same", name=f"conv{i}")
        h = b.add(Squeeze(axis=1, layout="NWC"), h, name=f"conv{i}.squeeze")
        h = b.add(Relu(), h, name=f"relu{i}")
    h = b.add(ExpandDims(axis=1, layout="NHWC"), h, name="pool.expand")
    h = b.add(MaxPool2d(kernel=(1, 2), strides=(1, 2), layout="NHWC"), h, name="pool")
    g = b.build(b.add(Squeeze(axis=1, layout="NWC"), h, name="pool.squeeze"))
    out = check_pass(g, DEFAULT_PIPELINE, HERE / "conv1d_default.txt")
    assert count(out, "transpose") == 2 and count(out, "expand_dims") == 1 and count(out, "squeeze") == 1


def test_default_pipeline_leaves_a_plain_channels_first_graph_alone():
    b = GraphBuilder("plain_nchw")
    x = b.input("x", ("N", 3, 8, 8), "NCHW")
    h = b.conv(x, 4, 3, layout="NCHW", name="conv1")
    h = b.add(MaxPool2d(kernel=(2, 2), strides=(2, 2)), h, name="pool")
    h = b.add(Flatten(), h, name="flat")
    g = b.build(b.add(Softmax(), b.dense(h, 3, name="fc"), name="softmax"))
    result = PassManager(DEFAULT_PIPELINE).run(g)
    assert result.graph == g and not any(r.changed for r in result.records)


# -- generated channels_last conv stacks ------------------------------------------------------------

LAYER = st.one_of(
    st.tuples(st.just("conv"), st.integers(1, 4), st.sampled_from([1, 3]), st.sampled_from([1, 2]),
              st.sampled_from(["same", "valid"])),
    st.tuples(st.just("depthwise"), st.sampled_from([1, 3]), st.sampled_from(["same", "valid"])),
    st.tuples(st.just("bn"), st.booleans(), st.booleans()),
    st.tuples(st.just("relu"), st.sampled_from([None, 6.0])),
    st.tuples(st.just("act"), st.sampled_from(["sigmoid", "tanh", "elu"])),
    st.tuples(st.just("maxpool"),),
    st.tuples(st.just("avgpool"),),
    st.tuples(st.just("pad"), st.integers(0, 1), st.integers(0, 2)),
    st.tuples(st.just("upsample"),),
    st.tuples(st.just("softmax"),),
)
HEAD = st.sampled_from(["spatial", "flatten_dense", "gap_dense", "gmp"])


def build_stack(layers: list, head: str, size: int, channels: int) -> Graph:
    b = GraphBuilder("stack", seed=len(layers))
    h = b.input("x", ("N", size, size, channels), "NHWC")
    for i, layer in enumerate(layers):
        kind, *args = layer
        _, hh, ww, c = b.shape(h)
        if kind == "conv":
            out_ch, k, stride, padding = args
            if padding == "valid" and min(hh, ww) < k:
                padding = "same"
            h = b.conv(h, out_ch, k, stride=stride, padding=padding, name=f"conv{i}")
        elif kind == "depthwise":
            k, padding = args
            if padding == "valid" and min(hh, ww) < k:
                padding = "same"
            h = b.conv(h, c, k, padding=padding, groups=c, name=f"dw{i}")
        elif kind == "bn":
            h = b.bn(h, -1, center=args[0], scale=args[1], name=f"bn{i}")
        elif kind == "relu":
            h = b.add(Relu(max_value=args[0]), h, name=f"relu{i}")
        elif kind == "act":
            h = b.add(Activation(function=args[0]), h, name=f"act{i}")
        elif kind in ("maxpool", "avgpool") and min(hh, ww) >= 2:
            cls = MaxPool2d if kind == "maxpool" else AvgPool2d
            h = b.add(cls(kernel=(2, 2), strides=(2, 2), layout="NHWC"), h, name=f"pool{i}")
        elif kind == "pad":
            h = b.add(Pad2d(pads=(args[0], args[1], args[1], args[0]), layout="NHWC"), h, name=f"pad{i}")
        elif kind == "upsample" and max(hh, ww) <= 8:
            h = b.add(Upsample2d(factors=(2, 1), layout="NHWC"), h, name=f"up{i}")
        elif kind == "softmax":
            h = b.add(Softmax(axis=-1), h, name=f"softmax{i}")
    if head == "flatten_dense":
        h = b.dense(b.add(Flatten(), h, name="flat"), 3, name="fc")
    elif head == "gap_dense":
        h = b.dense(b.add(GlobalAvgPool2d(layout="NHWC"), h, name="gap"), 3, name="fc")
    elif head == "gmp":
        h = b.add(GlobalMaxPool2d(keepdims=True, layout="NHWC"), h, name="gmp")
    return b.build(h)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(LAYER, min_size=1, max_size=6), head=HEAD, size=st.integers(3, 7),
       channels=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_generated_channels_last_stacks(layers, head, size, channels, seed):
    g = build_stack(layers, head, size, channels)
    result = PassManager(DEFAULT_PIPELINE).run(g)
    out = result.graph
    assert_same_numerics(g, out, seed=seed)
    assert count(out, "transpose") <= 2 and count(out, "batch_norm") == 0
    assert PROPERTIES["channels-first"](out)
    again = PassManager(DEFAULT_PIPELINE).run(out)
    assert again.graph == out and not any(r.changed for r in again.records), kinds(out)


LAYER_1D = st.one_of(
    st.tuples(st.just("conv"), st.integers(1, 4), st.sampled_from([1, 3]), st.sampled_from([1, 2]),
              st.sampled_from(["same", "valid"])),
    st.tuples(st.just("bn"), st.booleans(), st.booleans()),
    st.tuples(st.just("relu"), st.sampled_from([None, 6.0])),
    st.tuples(st.just("pool"), st.sampled_from(["max", "avg"])),
    st.tuples(st.just("softmax"),),
)


def build_stack_1d(layers: list, head: str, size: int, channels: int) -> Graph:
    """Conv1D-style layers in NWC, lowered as the frontend does: expand_dims, 2-D op, squeeze."""
    b = GraphBuilder("stack1d", seed=len(layers))
    h = b.input("x", ("N", size, channels), "NWC")

    def wrap(i: int, h: str, make) -> str:
        h = b.add(ExpandDims(axis=1, layout="NHWC"), h, name=f"l{i}.expand")
        return b.add(Squeeze(axis=1, layout="NWC"), make(h), name=f"l{i}.squeeze")

    for i, (kind, *args) in enumerate(layers):
        width = b.shape(h)[1]
        if kind == "conv":
            out_ch, k, stride, padding = args
            padding = "same" if width < k else padding
            h = wrap(i, h, lambda e: b.conv(e, out_ch, (1, k), stride=stride, padding=padding, name=f"conv{i}"))
        elif kind == "bn":
            h = b.bn(h, -1, center=args[0], scale=args[1], name=f"bn{i}")
        elif kind == "relu":
            h = b.add(Relu(max_value=args[0]), h, name=f"relu{i}")
        elif kind == "pool" and width >= 2:
            cls = MaxPool2d if args[0] == "max" else AvgPool2d
            h = wrap(i, h, lambda e: b.add(cls(kernel=(1, 2), strides=(1, 2), layout="NHWC"), e, name=f"pool{i}"))
        elif kind == "softmax":
            h = b.add(Softmax(axis=-1), h, name=f"softmax{i}")
    if head == "flatten_dense":
        h = b.dense(b.add(Flatten(), h, name="flat"), 3, name="fc")
    elif head == "gap_dense":
        e = b.add(ExpandDims(axis=1, layout="NHWC"), h, name="gap.expand")
        h = b.dense(b.add(GlobalAvgPool2d(layout="NHWC"), e, name="gap"), 3, name="fc")
    elif head == "gmp":
        e = b.add(ExpandDims(axis=1, layout="NHWC"), h, name="gmp.expand")
        h = b.add(GlobalMaxPool2d(layout="NHWC"), e, name="gmp")
    return b.build(h)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(LAYER_1D, min_size=1, max_size=6), head=HEAD, size=st.integers(3, 12),
       channels=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_generated_channels_last_1d_stacks(layers, head, size, channels, seed):
    g = build_stack_1d(layers, head, size, channels)
    out = PassManager(DEFAULT_PIPELINE).run(g).graph
    assert_same_numerics(g, out, seed=seed)
    assert count(out, "transpose") <= 2 and count(out, "batch_norm") == 0
    assert count(out, "expand_dims") <= 1 and count(out, "squeeze") <= 1
    again = PassManager(DEFAULT_PIPELINE).run(out)
    assert again.graph == out and not any(r.changed for r in again.records), kinds(out)
