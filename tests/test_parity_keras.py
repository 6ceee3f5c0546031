"""Numerical parity with Keras for every Phase-1 layer and config, from every source form.

Each case is converted from the live Keras 3 model, its ``.keras`` and ``.h5``
files, the live tf_keras model and its ``.h5`` file, run on the Numba CPU
backend, and compared with what Keras itself returns (rtol = atol = 1e-5).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

import keydnn
from conftest import keras_predict
from keydnn.ir import run_reference

pytestmark = pytest.mark.keras

TOL = dict(rtol=1e-5, atol=1e-5)


def _cnn(k, fmt, *body, input_shape):
    return k.Sequential([k.layers.Input(shape=input_shape), *body])


def _conv_case(fmt: str = "channels_first", **conv) -> Callable[[Any], Any]:
    """Conv2D + ReLU on a 3x11x10 (or 11x10x3) input."""
    shape = (3, 11, 10) if fmt == "channels_first" else (11, 10, 3)

    def build(k):
        L = k.layers
        return _cnn(k, fmt, L.Conv2D(data_format=fmt, **conv), L.ReLU(), input_shape=shape)

    return build


def _pool_case(fmt: str = "channels_first", **pool) -> Callable[[Any], Any]:
    shape = (2, 9, 11) if fmt == "channels_first" else (9, 11, 2)

    def build(k):
        return _cnn(k, fmt, k.layers.MaxPooling2D(data_format=fmt, **pool), input_shape=shape)

    return build


CASES: dict[str, tuple[Callable[[Any], Any], dict]] = {
    "conv_same_stride2": (_conv_case(filters=4, kernel_size=3, strides=2, padding="same"), {}),
    "conv_same_even_kernel": (_conv_case(filters=4, kernel_size=4, padding="same"), {}),
    "conv_same_stride3_k2x5": (_conv_case(filters=5, kernel_size=(2, 5), strides=(3, 2), padding="same"), {}),
    "conv_valid_strides_2x3": (_conv_case(filters=4, kernel_size=3, strides=(2, 3), padding="valid"), {}),
    "conv_dilation2_same": (_conv_case(filters=4, kernel_size=3, dilation_rate=2, padding="same"), {}),
    "conv_dilation_2x3_valid": (_conv_case(filters=4, kernel_size=(3, 2), dilation_rate=(2, 3)), {}),
    "conv_no_bias": (_conv_case(filters=6, kernel_size=3, use_bias=False), {}),
    "pool_3_stride2_same": (_pool_case(pool_size=3, strides=2, padding="same"), {}),
    "pool_2x3_strides_1x2": (_pool_case(pool_size=(2, 3), strides=(1, 2)), {}),
    "pool_2_stride1_same": (_pool_case(pool_size=2, strides=1, padding="same"), {}),
    "pool_default": (_pool_case(), {}),
    "gap_keepdims_flatten_dense": (lambda k: _cnn(
        k, "cf", k.layers.Conv2D(4, 3, data_format="channels_first"),
        k.layers.GlobalAveragePooling2D(data_format="channels_first", keepdims=True),
        k.layers.Flatten(), k.layers.Dense(3), input_shape=(2, 8, 8)), {}),
    "flatten_channels_first_dense": (lambda k: _cnn(
        k, "cf", k.layers.Conv2D(3, 3, data_format="channels_first"),
        k.layers.Flatten(data_format="channels_first"), k.layers.Dense(5), input_shape=(2, 6, 7)), {}),
    "flatten_default_dense_no_bias": (lambda k: _cnn(
        k, "cf", k.layers.Conv2D(3, 3, data_format="channels_first"),
        k.layers.Flatten(), k.layers.Dense(5, use_bias=False), input_shape=(2, 6, 7)), {}),
    "dense_rank3_input": (lambda k: _cnn(k, "cf", k.layers.Dense(4), k.layers.Softmax(axis=1), input_shape=(5, 7)), {}),
    "relu_variants": (lambda k: _cnn(
        k, "cf", k.layers.Dense(16), k.layers.ReLU(max_value=1.5, negative_slope=0.1, threshold=0.3),
        k.layers.Dense(16), k.layers.ReLU(max_value=6.0), k.layers.Dense(16), k.layers.ReLU(negative_slope=0.2),
        k.layers.Dense(16), k.layers.ReLU(threshold=0.4), k.layers.Dense(8), k.layers.ReLU(threshold=0.2, max_value=2.0),
        input_shape=(12,)), {}),
    "softmax_axis1_4d": (lambda k: _cnn(
        k, "cf", k.layers.Conv2D(4, 3, data_format="channels_first"), k.layers.Softmax(axis=1), input_shape=(2, 6, 6)), {}),
    "mlp_softmax": (lambda k: _cnn(
        k, "cf", k.layers.Dense(32), k.layers.ReLU(), k.layers.Dense(10), k.layers.Softmax(), input_shape=(20,)), {}),
}

FUSED = ["relu", "sigmoid", "tanh", "softmax", "elu", "selu", "softplus", "softsign", "swish", "relu6",
         "hard_sigmoid", "exponential", "gelu"]
for _act in FUSED:
    # (a fused softmax on a channels_first conv normalizes over W; its channels_last twin cannot say that)
    CASES[f"fused_{_act}"] = (lambda k, a=_act: _cnn(
        k, "cf", k.layers.Conv2D(4, 3, activation=a if a != "softmax" else "relu", data_format="channels_first"),
        k.layers.Flatten(),
        k.layers.Dense(6, activation=a), input_shape=(2, 7, 7)), {"allow_non_linear_activation": True})


def _build_seed(k):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from make_seed_model import build_seed_model

    return build_seed_model(k)


CASES["seed"] = (_build_seed, {})


def _input_for(model, batch: int, seed: int = 1) -> np.ndarray:
    shape = tuple(model.inputs[0].shape)[1:]
    return np.random.default_rng(seed).normal(size=(batch,) + shape).astype("f4")


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_every_source_form(case, keras_sources):
    build, kwargs = CASES[case]
    try:
        sources = keras_sources(case, build)
    except Exception as exc:  # pragma: no cover - a Keras version that cannot build the case
        pytest.skip(f"Keras cannot build {case}: {exc}")
    checked = 0
    for form, src, live in sources:
        if form == "live-tf_keras" and case == "fused_gelu":
            continue  # tf_keras's 'gelu' string has no stable meaning across TF versions (approximate flag)
        x = _input_for(live, batch=3) * (0.1 if case.startswith("fused_") else 1.0)  # keep exp() finite
        expected = keras_predict(live, x)
        model = keydnn.from_keras(src, **kwargs)
        got = model(x)
        np.testing.assert_allclose(got, expected, err_msg=f"{case} from {form}", **TOL)
        np.testing.assert_allclose(run_reference(model.graph, x)[0], expected, err_msg=f"{case} reference {form}", **TOL)
        checked += 1
    assert checked >= 4


def test_seed_model_modules_and_artifact_round_trip(keras_sources, tmp_path):
    sources = keras_sources("seed", _build_seed)
    form, path, live = sources[2]  # keras3-h5
    unoptimized = keydnn.from_keras(path, passes="infer-shapes")
    kinds = [type(m).__name__ for m in unoptimized.layers]
    assert kinds == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "GlobalAvgPool2d", "Flatten", "Dense", "Softmax"]
    model = keydnn.from_keras(path)  # default pipeline: ReLU fused into the convs, the no-op Flatten gone
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Conv2d", "MaxPool2d", "Conv2d", "GlobalAvgPool2d", "Dense", "Softmax"]
    assert model.layers[0].activation.kind == "relu"
    conv = model.layers[0]
    assert conv.weight.shape == (8, 1, 3, 3) and conv.bias.shape == (8,) and conv.pads == (1, 1, 1, 1)
    saved = model.save(tmp_path / "seed.json")
    loaded = keydnn.load(saved)
    x = _input_for(live, batch=5, seed=7)
    np.testing.assert_allclose(loaded(x), keras_predict(live, x), **TOL)
    assert loaded.graph == model.graph
    assert [layer["keras_class"] for layer in loaded.keras_layers][:3] == ["Conv2D", "ReLU", "MaxPooling2D"]


def test_float64_conversion(keras_sources):
    (_, _, live), *_ = keras_sources("seed", _build_seed)
    model = keydnn.from_keras(live, dtype=np.float64)
    x = _input_for(live, batch=2).astype("f8")
    out = model(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, keras_predict(live, x.astype("f4")), **TOL)


def test_input_validation_names_expected_shape(keras_sources):
    (_, _, live), *_ = keras_sources("seed", _build_seed)
    model = keydnn.from_keras(live)
    with pytest.raises(ValueError, match=r"expected \(batch, 1, 28, 28\)"):
        model(np.zeros((2, 28, 28, 1), "f4"))
    # the input dtype policy follows Keras: integers (uint8 images) are cast to the model's float type ...
    ints = np.arange(2 * 28 * 28).reshape(2, 1, 28, 28) % 7
    np.testing.assert_allclose(model(ints), model(ints.astype("f4")), rtol=0, atol=0)
    # ... and what cannot be cast is refused, naming the expected dtype
    with pytest.raises(ValueError, match="dtype complex128, which cannot be cast to the model's float32"):
        model(np.zeros((2, 1, 28, 28), "c16"))
    with pytest.raises(ValueError, match="takes 1 input"):
        model(np.zeros((2, 1, 28, 28), "f4"), np.zeros(1))


@pytest.mark.onednn
def test_tf_channels_first_conv_discrepancy():
    """Documents why conftest.keras_predict uses channels_last twins: TF's channels_first Conv2D layer can
    disagree with tf.nn.convolution in both layouts, while keydnn agrees with tf.nn.convolution.

    The layer's own channels_first kernels exist only where TensorFlow's oneDNN kernels are on (by default on
    CPUs with AVX-512 VNNI; TF_ENABLE_ONEDNN_OPTS=1 anywhere): elsewhere TensorFlow refuses the call, and the
    test is skipped (CI runs it under both settings)."""
    tf = pytest.importorskip("tensorflow")
    from keydnn.keras_runner import tf_runs_channels_first

    if not tf_runs_channels_first():
        pytest.skip("TensorFlow runs no channels_first Conv2D on this CPU (oneDNN kernels off: "
                    "TF_ENABLE_ONEDNN_OPTS=0, or a CPU without AVX-512 VNNI); nothing to compare")
    rng = np.random.default_rng(0)
    layer = tf.keras.layers.Conv2D(5, 3, strides=2, padding="same", data_format="channels_first")
    layer.build((None, 3, 11, 10))
    layer.set_weights([rng.normal(size=w.shape).astype("f4") for w in layer.get_weights()])
    w, b = layer.get_weights()
    x = rng.normal(size=(1, 3, 11, 10)).astype("f4")
    truth = tf.nn.convolution(x.transpose(0, 2, 3, 1), w, 2, "SAME").numpy().transpose(0, 3, 1, 2) + b.reshape(1, 5, 1, 1)
    nchw = tf.nn.convolution(x, w, 2, "SAME", data_format="NCHW").numpy() + b.reshape(1, 5, 1, 1)
    np.testing.assert_allclose(nchw, truth, **TOL)
    model = tf.keras.Sequential([tf.keras.layers.Input(shape=(3, 11, 10)), layer])
    ours = keydnn.from_keras(model)(x)
    np.testing.assert_allclose(ours, truth, **TOL)
    keras_err = float(np.abs(np.asarray(layer(x)) - truth).max())
    print(f"TF channels_first Conv2D(strides=2, padding='same') deviates from tf.nn.convolution by {keras_err:.3g}")
