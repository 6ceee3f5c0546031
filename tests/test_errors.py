"""Errors: every problem of a model named at once, placeholders in non-strict mode, clear refusals."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pytest

import keydnn
from keydnn.errors import BackendError, KerasInteropError

pytestmark = pytest.mark.keras

tf = pytest.importorskip("tensorflow")
L = tf.keras.layers


def _bad_model():
    return tf.keras.Sequential([
        L.Input(shape=(1, 8, 8)),
        L.Conv2D(4, 3, activation="relu", data_format="channels_first", name="conv_relu"),
        L.Conv2D(4, 3, padding="same", data_format="channels_first", name="ok_conv"),
        L.Reshape((4, 36), name="reshape"),
        L.AlphaDropout(0.1, name="alpha"),  # a layer class keydnn has no converter for
        L.Dense(2, activation="softmax", name="dense_softmax"),
    ], name="bad")


def test_strict_mode_reports_every_problem_at_once():
    with pytest.raises(KerasInteropError) as info:
        keydnn.from_keras(_bad_model())
    err = info.value
    by_layer = {p.layer_name: p for p in err.problems}
    assert set(by_layer) >= {"conv_relu", "alpha", "dense_softmax"}
    relu = by_layer["conv_relu"]
    assert (relu.layer_index, relu.layer_class, relu.field, relu.value) == (0, "Conv2D", "activation", "relu")
    assert "allow_non_linear_activation" in relu.supported
    assert by_layer["alpha"].layer_class == "AlphaDropout" and "Dense" in by_layer["alpha"].supported
    text = str(err)
    assert "layer 0 'conv_relu' (Conv2D)" in text and "'alpha' (AlphaDropout)" in text
    assert "'dense_softmax' (Dense)" in text


def test_fused_activation_is_lowered_when_allowed_never_dropped():
    model = tf.keras.Sequential([L.Input(shape=(6,)), L.Dense(4, activation="tanh", name="d")])
    converted = keydnn.from_keras(model, allow_non_linear_activation=True, passes="infer-shapes")
    assert [n.op.kind for n in converted.graph.nodes] == ["dense", "activation"]
    assert converted.graph.nodes[1].op.function == "tanh"
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("f4")
    np.testing.assert_allclose(converted(x), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_non_strict_keeps_placeholders_warns_and_refuses_to_run():
    with pytest.warns(UserWarning, match="placeholders"):
        model = keydnn.from_keras(_bad_model(), strict=False)
    kinds = [n.op.kind for n in model.graph.nodes]
    assert kinds.count("opaque") >= 2
    text = str(model.graph)
    assert "opaque(" in text and "keras_class=AlphaDropout" in text
    with pytest.raises(BackendError, match=r"conv_relu \(Conv2D\).*alpha \(AlphaDropout\)"):
        model(np.zeros((1, 1, 8, 8), "f4"))


def test_subclassed_models_are_refused_naming_sequential_and_functional():
    inp = tf.keras.Input(shape=(4,))
    functional = tf.keras.Model(inp, L.Dense(2)(inp))
    assert isinstance(keydnn.from_keras(functional), keydnn.Model)  # strict mode converts Functional models

    class Subclassed(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.fc = L.Dense(2)

        def call(self, x):
            return self.fc(x)

    model = Subclassed()
    model(np.zeros((1, 4), "f4"))
    with pytest.raises(KerasInteropError, match="tf.keras.Sequential or a Functional model"):
        keydnn.from_keras(model)


def test_dtype_policy_and_unknown_config_fields_are_refused(tmp_path):
    model = tf.keras.Sequential([L.Input(shape=(4,)), L.Dense(2, name="d", dtype="float16")])
    with pytest.raises(KerasInteropError, match="dtype policy 'float16'"):
        keydnn.from_keras(model)
    # A config field keydnn does not know (e.g. from a future Keras) is refused by name, not ignored.
    model = tf.keras.Sequential([L.Input(shape=(4,)), L.Dense(2, name="d")])
    path = tmp_path / "m.keras"
    model.save(path)
    patched = tmp_path / "patched.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(patched, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                cfg["config"]["layers"][-1]["config"]["future_knob"] = 3
                data = json.dumps(cfg).encode()
            dst.writestr(item, data)
    with pytest.raises(KerasInteropError, match="'future_knob' is not understood") as info:
        keydnn.from_keras(patched)
    assert info.value.problems[0].field == "future_knob"


def test_lambda_layers_are_refused_without_deserializing(tmp_path):
    model = tf.keras.Sequential([L.Input(shape=(4,)), L.Lambda(lambda t: t * 2, name="double")])
    path = tmp_path / "lam.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    with pytest.raises(KerasInteropError, match="'double' \\(Lambda\\)"):
        keydnn.from_keras(path)


def test_missing_file_and_unknown_objects():
    with pytest.raises(KerasInteropError, match="does not exist"):
        keydnn.from_keras("/nonexistent/model.h5")
    with pytest.raises(KerasInteropError):
        keydnn.from_keras(object())


def test_device_strings():
    model = tf.keras.Sequential([L.Input(shape=(4,)), L.Dense(2)])
    assert str(keydnn.from_keras(model, device="cpu").device) == "cpu"
    assert str(keydnn.from_keras(model, device=keydnn.Device("cpu")).device) == "cpu"
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        keydnn.from_keras(model, device="tpu")
    with pytest.raises(keydnn.KeydnnError, match="cuda"):
        keydnn.from_keras(model, device="cuda:0")
