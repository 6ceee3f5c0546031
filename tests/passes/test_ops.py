"""The ops the passes introduce or rewrite: validators, shape rules, reference kernels, text and JSON."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from keydnn.ir import Graph, TensorType, run_reference
from keydnn.ir.ops import (
    OP_CLASSES, BatchNorm, Conv2d, Crop2d, ExpandDims, GlobalMaxPool2d, Pad2d, PRelu, ScaleShift, ShapeError,
    Squeeze, Upsample2d,
)
from keydnn.ir.reference import REFERENCE_KERNELS

from .builders import GraphBuilder

RNG = np.random.default_rng(0)


def t(*shape, layout="ANY"):
    return TensorType(shape=shape, layout=layout)


def run_op(op, *args):
    return REFERENCE_KERNELS[op.kind](op, [np.asarray(a, dtype=np.float64) for a in args])


def test_every_op_has_a_reference_kernel():
    assert set(OP_CLASSES) <= set(REFERENCE_KERNELS)


@pytest.mark.parametrize("make", [
    lambda: BatchNorm(axis=0),
    lambda: BatchNorm(epsilon=-1.0),
    lambda: ScaleShift(axis=0),
    lambda: Pad2d(pads=(0, -1, 0, 0)),
    lambda: Crop2d(crops=(-1, 0, 0, 0)),
    lambda: Upsample2d(factors=(0, 2)),
    lambda: Upsample2d(mode="bilinear"),
    lambda: ExpandDims(axis=0),
    lambda: Squeeze(axis=0),
])
def test_invalid_attributes_are_refused(make):
    with pytest.raises(ValidationError):
        make()


def test_shape_rules():
    x = t("N", 3, 8, 6, layout="NCHW")
    assert Pad2d(pads=(1, 2, 0, 3)).infer([x]).shape == ("N", 3, 11, 9)
    assert Crop2d(crops=(1, 2, 0, 3)).infer([x]).shape == ("N", 3, 5, 3)
    assert Upsample2d(factors=(2, 3), layout="NHWC").infer([t("N", 4, 5, 2)]).shape == ("N", 8, 15, 2)
    assert GlobalMaxPool2d(layout="NHWC").infer([t("N", 4, 5, 2)]) == TensorType(shape=("N", 2), layout="NC")
    assert GlobalMaxPool2d(keepdims=True).infer([x]).shape == ("N", 3, 1, 1)
    assert ExpandDims(axis=1, layout="NHWC").infer([t("N", 7, 3, layout="NWC")]) == t("N", 1, 7, 3, layout="NHWC")
    assert Squeeze(axis=2, layout="NCW").infer([t("N", 3, 1, 7)]) == t("N", 3, 7, layout="NCW")
    with pytest.raises(ShapeError):
        Crop2d(crops=(4, 4, 0, 0)).infer([x])
    with pytest.raises(ShapeError):
        Squeeze(axis=1).infer([x])
    with pytest.raises(ShapeError):
        ExpandDims(axis=5).infer([x])


def test_parameter_shape_rules():
    x = t("N", 3, 8, 6)
    c3 = t(3)
    assert BatchNorm(axis=1).infer([x, c3, c3, c3, c3]) == x
    with pytest.raises(ShapeError):
        BatchNorm(axis=-1).infer([x, c3, c3, c3, c3])
    assert ScaleShift(axis=1).infer([x, c3, t()]) == x
    assert ScaleShift(axis=-1).infer([x, t(6), t(1)]) == x
    assert ScaleShift(axis=None).infer([x, t(3, 1, 6), t(1)]) == x
    with pytest.raises(ShapeError):
        ScaleShift(axis=None).infer([x, t(3), t()])
    with pytest.raises(ShapeError):
        ScaleShift(axis=1).infer([x, t(6), t()])
    assert PRelu().infer([x, t(3, 1, 1)]) == x and PRelu().infer([x, t()]) == x
    with pytest.raises(ShapeError):
        PRelu().infer([x, t(8, 6)])


def test_batch_norm_reference_is_the_keras_formula():
    x = RNG.normal(size=(2, 5, 4))
    mean, var, gamma, beta = RNG.normal(size=4 * 4).reshape(4, 4)
    var = np.abs(var) + 0.1
    got = run_op(BatchNorm(axis=-1, epsilon=0.01), x, mean, var, gamma, beta)
    np.testing.assert_allclose(got, gamma * (x - mean) / np.sqrt(var + 0.01) + beta)


def test_scale_shift_and_prelu_reference():
    x = RNG.normal(size=(2, 3, 4))
    s, b = RNG.normal(size=3), RNG.normal(size=3)
    np.testing.assert_allclose(run_op(ScaleShift(axis=1), x, s, b), x * s[:, None] + b[:, None])
    full = RNG.normal(size=(3, 4))
    np.testing.assert_allclose(run_op(ScaleShift(axis=None), x, full, [2.0]), x * full + 2.0)
    alpha = RNG.normal(size=(1, 4))
    np.testing.assert_allclose(run_op(PRelu(), x, alpha), np.where(x > 0, x, alpha * x))


def test_spatial_references_agree_across_layouts():
    x = RNG.normal(size=(2, 3, 5, 4))
    nhwc = x.transpose(0, 2, 3, 1)
    for op in (Pad2d(pads=(1, 0, 2, 1), value=-2.0), Crop2d(crops=(1, 2, 0, 1)), Upsample2d(factors=(2, 3)),
               GlobalMaxPool2d(keepdims=True)):
        first = run_op(op, x)
        last = run_op(op.model_copy(update={"layout": "NHWC"}), nhwc)
        np.testing.assert_allclose(last, first.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(run_op(Upsample2d(factors=(2, 3)), x), np.kron(x, np.ones((1, 1, 2, 3))))
    assert run_op(Pad2d(pads=(1, 0, 0, 0), value=-2.0), x)[:, :, 0].tolist() == np.full((2, 3, 4), -2.0).tolist()
    np.testing.assert_allclose(run_op(Crop2d(crops=(1, 2, 0, 1)), x), x[:, :, 1:3, 0:3])
    np.testing.assert_allclose(run_op(GlobalMaxPool2d(), x), x.max(axis=(2, 3)))


def test_conv1d_as_expand_conv2d_squeeze_matches_a_direct_1d_convolution():
    """The documented 1-D lowering (NWC): expand_dims(1) -> conv2d NHWC (O, I, 1, K) -> squeeze(1)."""
    b = GraphBuilder("conv1d", dtype="float64")
    x = b.input("x", ("N", 10, 3), "NWC")
    kernel = RNG.normal(size=(3, 3, 4))  # Keras Conv1D kernel: (k, in, out)
    h = b.add(ExpandDims(axis=1, layout="NHWC"), x, name="e")
    w = b.const("w", kernel.transpose(2, 1, 0)[:, :, None, :])
    h = b.add(Conv2d(strides=(1, 2), dilations=(1, 1), layout="NHWC"), h, w, name="c")
    g = b.build(b.add(Squeeze(axis=1, layout="NWC"), h, name="s"))
    xs = RNG.normal(size=(2, 10, 3))
    want = np.stack([np.einsum("nki,kio->no", xs[:, 2 * i:2 * i + 3], kernel) for i in range(4)], axis=1)
    np.testing.assert_allclose(run_reference(g, xs)[0], want)


def test_text_and_json_round_trip_of_new_ops():
    b = GraphBuilder("new_ops")
    x = b.input("x", ("N", 3, 6, 6), "NCHW")
    h = b.bn(x, 1, name="bn")
    h = b.add(ScaleShift(axis=None), h, b.const("s", np.array(0.5)), b.const("t", np.zeros((3, 1, 1))), name="ss")
    h = b.add(PRelu(), h, b.rand("a", (3, 1, 1)), name="prelu")
    h = b.add(Pad2d(pads=(1, 1, 0, 0)), h, name="pad")
    h = b.add(Crop2d(crops=(0, 1, 1, 0)), h, name="crop")
    h = b.add(Upsample2d(factors=(1, 2)), h, name="up")
    h = b.add(Squeeze(axis=2, layout="NCW"), b.add(GlobalMaxPool2d(keepdims=True), h, name="gmp"), name="sq")
    g = b.build(b.add(ExpandDims(axis=3), h, name="ex"))
    text = str(g)
    assert "%pad = pad2d(%prelu) {pads=[1,1,0,0], value=0.0, layout=NCHW} : f32[N,3,8,6] NCHW" in text
    assert "%up = upsample2d(%crop) {factors=[1,2], mode=nearest, layout=NCHW} : f32[N,3,7,10] NCHW" in text
    again = Graph.model_validate_json(g.model_dump_json()).with_weights(dict(g.weights))
    assert again == g and str(again) == text
