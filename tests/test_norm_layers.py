"""LayerNormalization, RMSNormalization, GroupNormalization, UnitNormalization (issue 18): parity with Keras
from every source form, both numba-cpu modes, and the layout pass keeping the normalized axes right."""

from __future__ import annotations

import numpy as np
import pytest
from parity_helpers import check_parity, k3_sources

import keydnn
from keydnn.ir import run_reference
from keydnn.ir.ops import LayerNorm, Reduce

pytestmark = pytest.mark.keras


def _seq(shape, *layers):
    def build(k):
        return k.Sequential([k.layers.Input(shape=shape), *(make(k.layers) for make in layers)])
    return build


CASES = {
    # channels_last images: the layout pass runs the convs channels-first, so the normalized axes move
    "layernorm_image": _seq((6, 5, 3), lambda L: L.Conv2D(4, 3, padding="same"), lambda L: L.LayerNormalization(),
                            lambda L: L.Conv2D(4, 3), lambda L: L.LayerNormalization(axis=[1, 2, 3], epsilon=0.1),
                            lambda L: L.Conv2D(5, 1), lambda L: L.LayerNormalization(axis=(1, 2), center=False),
                            lambda L: L.LayerNormalization(axis=-2, scale=False)),
    "layernorm_seq": _seq((7, 6), lambda L: L.Dense(8), lambda L: L.LayerNormalization(),
                          lambda L: L.LayerNormalization(axis=1, center=False, scale=False), lambda L: L.Dense(3)),
    "groupnorm": _seq((6, 5, 4), lambda L: L.Conv2D(6, 3, padding="same"), lambda L: L.GroupNormalization(groups=3),
                      lambda L: L.Conv2D(4, 1), lambda L: L.GroupNormalization(groups=-1, center=False),
                      lambda L: L.GroupNormalization(groups=2, axis=1, scale=False, epsilon=0.01)),
    "unitnorm": _seq((5, 4, 3), lambda L: L.Conv2D(4, 2), lambda L: L.UnitNormalization(),
                     lambda L: L.UnitNormalization(axis=[1, 2]), lambda L: L.Flatten(), lambda L: L.Dense(4),
                     lambda L: L.UnitNormalization()),
}
K3_CASES = {
    "layernorm_rms": _seq((6, 5, 3), lambda L: L.Conv2D(4, 3, padding="same"),
                          lambda L: L.LayerNormalization(rms_scaling=True),
                          lambda L: L.LayerNormalization(axis=[1, 3], rms_scaling=True, epsilon=0.05)),
    "rmsnorm": _seq((7, 6), lambda L: L.Dense(8), lambda L: L.RMSNormalization(),
                    lambda L: L.RMSNormalization(axis=[1, 2], epsilon=1e-3), lambda L: L.Dense(3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_every_source_form(case, keras_sources):
    check_parity(keras_sources(f"i18_{case}", CASES[case]))


@pytest.mark.parametrize("case", sorted(K3_CASES))
def test_parity_keras3_only(case, tmp_path):
    check_parity(k3_sources(tmp_path, case, K3_CASES[case]))


def test_ops_mode_and_layout(keras_sources):
    """The per-op path agrees too, and canonicalize-layout leaves no transpose around a normalization of a
    channels_last conv stack (the axes are remapped to where the channels now are)."""
    (_, live, _), *_ = keras_sources("i18_layernorm_image", CASES["layernorm_image"])
    model = keydnn.from_keras(live)
    kinds = [n.op.kind for n in model.graph.nodes]
    assert kinds.count("layer_norm") == 4 and kinds.count("transpose") <= 2, kinds
    first = next(n for n in model.graph.nodes if n.op.kind == "layer_norm")
    assert first.op.axes == (1,), first.op  # Keras's channel axis -1, now axis 1 of the NCHW tensor
    x = np.random.default_rng(0).normal(size=(2, 6, 5, 3)).astype("f4")
    want = np.asarray(live(x))
    from keydnn.backends.numba_cpu import compile_graph
    np.testing.assert_allclose(compile_graph(model.graph, mode="ops")(x)[0], want, rtol=1e-4, atol=1e-4)


def test_refusals_are_named(tmp_path):
    import tensorflow as tf
    L = tf.keras.layers
    model = tf.keras.Sequential([L.Input(shape=(6, 4)), L.LayerNormalization(dtype="mixed_float16"),
                                 L.GroupNormalization(groups=2, dtype="bfloat16")])
    with pytest.raises(keydnn.KerasInteropError) as info:
        keydnn.from_keras(model)
    assert [(p.layer_class, p.field) for p in info.value.problems] == [
        ("LayerNormalization", "dtype"), ("GroupNormalization", "dtype")]


def test_reduce_op_reference_and_cpu():
    from passes.builders import GraphBuilder

    from keydnn.backends.numba_cpu import compile_graph
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 4, 5)).astype("f4")
    for mode in ("mean", "sum", "max", "min"):
        for axes, keep in (((1,), False), ((2, 3), True), ((1, 3), False)):
            b = GraphBuilder("r")
            v = b.input("x", ("N", 3, 4, 5))
            g = b.build(b.add(Reduce(mode=mode, axes=axes, keepdims=keep), v))
            want = getattr(np, {"mean": "mean", "sum": "sum", "max": "max", "min": "min"}[mode])(
                x.astype("f8"), axis=axes, keepdims=keep)
            np.testing.assert_allclose(run_reference(g, x)[0], want, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(compile_graph(g, mode="ops")(x)[0], want, rtol=1e-5, atol=1e-5)


def test_layer_norm_op_validates():
    with pytest.raises(ValueError):
        LayerNorm(axes=(0,))
    with pytest.raises(ValueError):
        LayerNorm(axes=())
