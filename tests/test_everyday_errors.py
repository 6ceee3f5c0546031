"""Issue 19, friction 1: conversion errors name root causes only.

A user's CNN with fused activations gets one problem per real refusal (each saying in one line what to
pass), not a list padded with the supported layers that follow; an unsupported layer with several outputs
is named as unsupported; a ``training: true`` Keras wrote itself does not hide the layer's own status.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import keydnn
from keydnn.errors import BackendError, KerasInteropError
from keydnn.frontends.keras.registry import CONVERTERS

pytestmark = pytest.mark.keras


def _cnn(tmp_path):
    import keras
    from keras import layers

    model = keras.Sequential([
        keras.Input((12, 12, 3)), layers.Conv2D(4, 3, activation="relu", name="conv2d"),
        layers.BatchNormalization(name="batch_normalization"), layers.Dropout(0.2, name="dropout"),
        layers.Conv2D(4, 3, activation="relu", name="conv2d_1"), layers.MaxPooling2D(name="max_pooling2d"),
        layers.Flatten(name="flatten"), layers.Dense(8, activation="relu", name="dense"),
        layers.Dense(3, activation="softmax", name="dense_1")], name="my_cnn")  # names as a fresh session's
    rng = np.random.default_rng(0)
    for w in model.weights:
        if "variance" not in w.path:
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    path = tmp_path / "cnn.keras"
    model.save(path)
    return model, path


def test_fused_activations_are_the_only_problems_and_say_what_to_pass(tmp_path):
    model, path = _cnn(tmp_path)
    with pytest.raises(KerasInteropError) as info:
        keydnn.from_keras(path)
    err = info.value
    assert [p.layer_name for p in err.problems] == ["conv2d", "conv2d_1", "dense", "dense_1"], str(err)
    assert all(p.field == "activation" for p in err.problems)
    first_line = str(err).splitlines()[0]
    assert "layer 0 'conv2d'" in first_line and "fused non-linear activation 'relu'" in first_line
    text = str(err)
    assert "unknown" not in text and not err.notes
    line = str(err.problems[0])
    assert "\n" not in line
    assert "allow_non_linear_activation=True" in line and "--allow-non-linear-activation" in line
    assert "own exact 'relu' node" in line
    # ... and passing it works, exactly
    ours = keydnn.from_keras(path, allow_non_linear_activation=True)
    x = np.random.default_rng(1).normal(size=(4, 12, 12, 3)).astype("float32")
    np.testing.assert_allclose(ours(x), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)


def test_layers_after_an_unsupported_one_are_one_note_not_problems(tmp_path):
    import keras
    from keras import layers

    inp = keras.Input((6,))
    x = layers.Dense(4, activation="tanh", name="d1")(inp)      # refused only for its activation: shape known
    x = layers.Dense(4, name="d2")(x)                          # checked: fine
    x = layers.ActivityRegularization(l1=0.1, name="reg")(x)
    x = layers.Dense(4, name="d3", activation="sigmoid")(x)    # checked: its own refusal is reported
    model = keras.Model(inp, x)
    with pytest.raises(KerasInteropError) as info:
        keydnn.from_keras(model)
    assert [p.layer_name for p in info.value.problems] == ["d1", "d3"]


def test_unsupported_multi_output_layer_is_named_as_unsupported(tmp_path, monkeypatch):
    import keras
    from keras import layers

    monkeypatch.delitem(CONVERTERS, "LSTM", raising=False)  # whatever LSTM support exists elsewhere
    inp = keras.Input((5, 4))
    out, h, _c = layers.LSTM(3, return_state=True, name="lstm")(inp)
    y = layers.Dense(2, name="head")(layers.Concatenate(name="cat")([out, h]))
    path = tmp_path / "lstm.keras"
    keras.Model(inp, y).save(path)
    with pytest.raises(KerasInteropError) as info:
        keydnn.from_keras(path)
    err = info.value
    assert [(p.layer_name, p.layer_class) for p in err.problems] == [("lstm", "LSTM")]
    assert "unsupported layer class 'LSTM'" in str(err).splitlines()[0]
    assert "no layer produces" not in str(err)
    assert len(err.notes) == 1 and "'cat'" in err.notes[0]


def test_training_true_written_by_keras_does_not_hide_the_layer_status(tmp_path, monkeypatch):
    import json
    import zipfile

    import keras
    from keras import layers

    monkeypatch.delitem(CONVERTERS, "RandomFlip", raising=False)
    inp = keras.Input((8, 8, 3))
    y = layers.Dense(2)(layers.Flatten()(layers.RandomFlip(name="flip")(inp)))
    path = tmp_path / "flip.keras"
    keras.Model(inp, y).save(path)
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    flip = next(layer for layer in config["config"]["layers"] if layer["name"] == "flip")
    assert flip["inbound_nodes"][0]["kwargs"] == {"training": True}  # Keras wrote it, not the user
    with pytest.raises(KerasInteropError) as info:
        keydnn.from_keras(path)
    assert [p.layer_name for p in info.value.problems] == ["flip"]
    assert "unsupported layer class 'RandomFlip'" in str(info.value.problems[0])
    assert "training" not in str(info.value)


def test_non_strict_never_says_supported_layers_cannot_run(tmp_path, monkeypatch):
    import keras
    from keras import layers

    monkeypatch.delitem(CONVERTERS, "LSTM", raising=False)
    inp = keras.Input((5, 4))
    x = layers.LSTM(3, name="lstm")(inp)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(2, name="head")(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keydnn.from_keras(keras.Model(inp, x), strict=False)
    (warning,) = [w for w in caught if "placeholder" in str(w.message)]
    text = str(warning.message)
    assert "'lstm' (LSTM)" in text and "'flat'" in text and "not checked" in text
    assert "cannot run" not in text
    with pytest.raises(BackendError) as info:
        model(np.zeros((1, 5, 4), "float32"))
    message = str(info.value)
    assert "lstm (LSTM)" in message and "flat" not in message and "1 later layer(s)" in message


def test_summary_counts_parameters_as_keras_does(tmp_path):
    model, path = _cnn(tmp_path)
    ours = keydnn.from_keras(path, allow_non_linear_activation=True)
    text = ours.summary()
    assert f"Total params: {model.count_params():,} (as Keras counts them)" in text
    from keydnn.introspect import summary_rows

    rows = {r["layer"]: r for r in summary_rows(ours)}
    for layer in model.layers:
        assert rows[layer.name]["keras_params"] == layer.count_params(), layer.name
    (bn,) = [r for r in rows.values() if r["class"] == "BatchNormalization"]
    assert bn["params"] == 0 and bn["keras_params"] == 4 * 4  # folded into the conv by keydnn
    # the count survives the artifact
    ours.save(tmp_path / "a.json")
    assert keydnn.load(tmp_path / "a.json").summary() == text


def test_functional_outputs_carry_keras_names_through_artifact_and_run(tmp_path):
    import json

    import keras
    from click.testing import CliRunner
    from keras import layers

    from keydnn.cli import cli

    inp = keras.Input((6,), name="features")
    hidden = layers.Dense(8, activation="relu", name="trunk")(inp)
    a = layers.Dense(3, activation="softmax", name="head_a")(hidden)
    b = layers.Dense(2, activation="sigmoid", name="head_b")(hidden)
    model = keras.Model(inp, [a, b])
    ours = keydnn.from_keras(model, allow_non_linear_activation=True)
    assert ours.output_names == list(model.output_names) == ["head_a", "head_b"]
    assert list(ours.graph.outputs) != ours.output_names  # the IR values are the fused activations' nodes
    ours.save(tmp_path / "m.json")
    doc = json.loads((tmp_path / "m.json").read_text())
    assert [(o["name"], o.get("value")) for o in doc["interface"]["outputs"]] == [
        (n, v if v != n else None) for n, v in zip(ours.output_names, ours.graph.outputs)]
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "m.json"), "--input", str(tmp_path / "x.npy"), "--output",
                                   str(tmp_path / "y.npz"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["output_shapes"] == {"head_a": [5, 3], "head_b": [5, 2]}
    with np.load(tmp_path / "y.npz") as y:
        for name, want in zip(["head_a", "head_b"], model.predict(x, verbose=0)):
            np.testing.assert_allclose(y[name], want, rtol=1e-5, atol=1e-6)
