"""Keras's own output on every CPU (keydnn.keras_runner): direct calls, XLA for channels_first, clear refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keydnn import keras_runner
from keydnn.keras_runner import KerasRunError, has_channels_first, keras_call, keras_outputs

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parents[1]
SEED_H5 = ROOT / "examples" / "seed_cnn.h5"
TOL = dict(rtol=1e-5, atol=1e-6)


def _seed_pair(keras):
    sys.path.insert(0, str(ROOT / "examples"))
    from make_seed_model import build_seed_model, build_seed_model_channels_last

    first = build_seed_model(keras)
    rng = np.random.default_rng(0)
    first.set_weights([rng.normal(size=w.shape).astype("f4") for w in first.get_weights()])
    last = build_seed_model_channels_last(keras)
    last.set_weights(first.get_weights())
    return first, last


@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_channels_first_model_matches_its_channels_last_twin(flavor):
    """Whatever TensorFlow's oneDNN setting, a channels_first model runs (through XLA) and is right."""
    keras = pytest.importorskip("tensorflow").keras if flavor == "keras3" else pytest.importorskip("tf_keras")
    first, last = _seed_pair(keras)
    x = np.random.default_rng(1).normal(size=(3, 1, 28, 28)).astype("f4")
    (got,) = keras_outputs(first, x)
    np.testing.assert_allclose(got, np.asarray(last(x.transpose(0, 2, 3, 1))), **TOL)
    conv = keras_call(first.layers[0], x)  # one layer, as --verify's per-layer report runs it
    assert np.asarray(conv).shape == (3, 8, 28, 28)
    assert has_channels_first(first) and not has_channels_first(last)


def test_wrappers_and_nested_models_are_entered():
    tf = pytest.importorskip("tensorflow")
    L = tf.keras.layers
    inner = tf.keras.Sequential([L.Input((2, 5, 5)), L.Conv2D(3, 3, data_format="channels_first")])
    outer = tf.keras.Sequential([L.Input((2, 5, 5)), inner, L.Flatten()])
    assert has_channels_first(outer)
    timed = L.TimeDistributed(L.Conv2D(3, 3, data_format="channels_first"))
    assert has_channels_first(timed)
    assert not has_channels_first(tf.keras.Sequential([L.Input((4,)), L.Dense(2)]))


def test_refused_direct_call_falls_back_to_xla(monkeypatch):
    """A model TensorFlow refuses on this CPU (as it refuses NCHW convs without oneDNN) runs through XLA."""
    tf = pytest.importorskip("tensorflow")
    _, last = _seed_pair(tf.keras)
    x = np.random.default_rng(2).normal(size=(2, 28, 28, 1)).astype("f4")
    want = np.asarray(last(x))

    def refuse(fn, value):
        raise tf.errors.UnimplementedError(None, None, "The Conv2D op currently only supports the NHWC tensor "
                                           "format on the CPU. The op was given the format: NCHW")

    monkeypatch.setattr(keras_runner, "_invoke", refuse)
    np.testing.assert_allclose(keras_outputs(last, x)[0], want, **TOL)


def test_a_model_bug_is_not_mistaken_for_a_cpu_refusal(monkeypatch):
    tf = pytest.importorskip("tensorflow")
    _, last = _seed_pair(tf.keras)

    def broken(fn, value):
        raise KeyError("not a TensorFlow refusal")

    monkeypatch.setattr(keras_runner, "_invoke", broken)
    with pytest.raises(KeyError):
        keras_outputs(last, np.zeros((1, 28, 28, 1), "f4"))


def _cannot_run_anywhere(monkeypatch, tf):
    def refuse(fn, value):
        raise tf.errors.UnimplementedError(None, None, "The Conv2D op currently only supports the NHWC tensor "
                                           "format on the CPU")

    def no_xla(fn):
        def compiled(value):
            raise tf.errors.InvalidArgumentError(None, None, "XLA cannot compile this op")
        return compiled

    monkeypatch.setattr(keras_runner, "_invoke", refuse)
    monkeypatch.setattr(keras_runner, "_xla", no_xla)


def test_a_model_tensorflow_cannot_run_is_a_clear_error(monkeypatch):
    tf = pytest.importorskip("tensorflow")
    first, _ = _seed_pair(tf.keras)
    _cannot_run_anywhere(monkeypatch, tf)
    with pytest.raises(KerasRunError) as info:
        keras_outputs(first, np.zeros((1, 1, 28, 28), "f4"))
    text = str(info.value)
    assert "seed_cnn" in text and "NHWC" in text and "XLA cannot compile" in text and "TF_ENABLE_ONEDNN_OPTS" in text


def test_convert_verify_where_keras_cannot_run_exits_1_and_writes_nothing(monkeypatch, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from click.testing import CliRunner

    from keydnn.cli import cli

    _cannot_run_anywhere(monkeypatch, tf)
    dst = tmp_path / "s.json"
    res = CliRunner().invoke(cli, ["convert", "--src", str(SEED_H5), "--dst", str(dst), "--verify"])
    assert res.exit_code == 1, res.output
    assert "keydnn: error: TensorFlow cannot run Keras model" in res.output
    assert "internal error" not in res.output and "Traceback" not in res.output
    assert not dst.exists()


def test_convert_verify_of_the_bundled_model_without_onednn(tmp_path):
    """The issue's check, in a fresh process with TensorFlow's oneDNN kernels off (as on AVX2-only CPUs)."""
    pytest.importorskip("tensorflow")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    dst = tmp_path / "s.json"
    proc = subprocess.run([sys.executable, "-m", "keydnn", "convert", "--src", str(SEED_H5), "--dst", str(dst),
                           "--verify"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK: max |keydnn - keras|" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "keydnn", "verify", str(dst)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.startswith("OK"), proc.stdout + proc.stderr


def test_xla_path_is_right_at_a_second_sequence_length():
    """The XLA function (what channels_first models run on) traces each input shape for itself: a
    ``reduce_retracing`` function, relaxed to symbolic shapes, returned wrong outputs for
    TimeDistributed(Conv2D) -> LSTM at a second length (TF 2.21; ``../shared/KERAS_FILES.md``)."""
    keras = pytest.importorskip("tensorflow").keras
    x_in = keras.Input((None, 6, 6, 2))
    h = keras.layers.TimeDistributed(keras.layers.Conv2D(3, 3, activation="relu"))(x_in)
    h = keras.layers.TimeDistributed(keras.layers.Flatten())(h)
    model = keras.Model(x_in, keras.layers.LSTM(4)(h))
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("f4") * 0.3 for w in model.get_weights()])
    run = keras_runner._xla(model)
    for shape in [(1, 3, 6, 6, 2), (3, 5, 6, 6, 2), (2, 3, 6, 6, 2)]:
        x = rng.normal(size=shape).astype("f4")
        np.testing.assert_allclose(np.asarray(run(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-5,
                                   err_msg=f"input shape {shape}")
