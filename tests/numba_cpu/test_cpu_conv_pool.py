"""numba-cpu convolutions (every form, epilogue, dtype) and pooling, in both modes, against the reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_helpers import (
    CONV_PATHS,
    EPILOGUES,
    MODES,
    check,
    compile_path,
    conv_graph,
    make_graph,
    node,
    randn,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from keydnn.backends.numba_cpu import compile_graph
from keydnn.backends.numba_cpu.codegen import emit_common as cg_emit_common
from keydnn.backends.numba_cpu.codegen import emit_conv as cg_emit_conv
from keydnn.ir import run_reference
from keydnn.ir.ops import (
    Activation,
    AvgPool2d,
    Conv2d,
    GlobalAvgPool2d,
    MaxPool2d,
    Relu,
)

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
    conflict = cg_emit_common.set_conflict
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
@pytest.mark.parametrize("form", cg_emit_conv.CONV_FORMS)
def test_conv2d_forms_with_general_epilogue(form: str, dtype: str) -> None:
    """Each GEMM form with an epilogue applied after the tile store, several channel blocks and both dtypes."""
    g, x = conv_graph(3, 5, 9, 7, 37, (3, 3), pads=(1, 1, 1, 1), strides=(1, 2), dtype=dtype,
                      activation=Activation(function="elu", alpha=0.7))
    check(g, x, exe=compile_path(g, f"codegen:{form}"), rtol=1e-5, atol=1e-5)


def test_conv_form_follows_lane_use() -> None:
    """Rows of at least half a vector go to implicit GEMM (strided ones over phase-split rows), narrow rows
    to channel vectors (even with few channels: packing a panel costs more), unpadded pointwise convs read
    their input as the im2col panel."""
    form = cg_emit_conv.conv_form
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
