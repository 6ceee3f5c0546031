"""Issue 19: what a new user trips over (frictions 2-8), each with its fixed behaviour.

Runs on the bundled seed CNN (no TensorFlow needed): positional convert, help on every option, consistent
messages for directories and wrong file kinds, ``run`` over memory-mapped inputs in batches with a short
summary, the input dtype policy, Keras output names and source facts in the artifact, summary, profile,
threads, and compile progress from the API.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import keydnn
from keydnn.cli import cli
from keydnn.cli.common import load_inputs
from keydnn.errors import ArtifactError, KerasInteropError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEED_H5 = EXAMPLES / "seed_cnn.h5"


def invoke(*args: str) -> "click.testing.Result":
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("seed") / "seed.json"
    res = invoke("convert", SEED_H5, dst)  # positional SRC DST
    assert res.exit_code == 0, res.output
    return dst


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    with np.load(EXAMPLES / "seed_cnn_samples.npz", allow_pickle=False) as data:
        return data["x"], data["keras_out"]


# -- 4: convert SRC DST, help everywhere, one message per wrong kind of file ---------------------------------

def test_positional_convert_equals_the_option_form(seed, tmp_path):
    res = invoke("convert", "--src", SEED_H5, "--dst", tmp_path / "b.json")
    assert res.exit_code == 0
    assert keydnn.load(seed).graph == keydnn.load(tmp_path / "b.json").graph
    res = CliRunner().invoke(cli, ["convert", str(SEED_H5), str(tmp_path / "c.json"), "--dst", str(tmp_path / "d.json")])
    assert res.exit_code == 2 and "disagree" in res.output


def test_every_option_of_every_command_has_help():
    missing = []
    for name, command in cli.commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.help:
                missing.append(f"{name} {param.opts[0]}")
    assert missing == []
    for option in ("--dtype", "--device"):
        assert option in invoke("convert", "--help").output
    text = invoke("convert", "--help").output
    assert "precision" in text and "cuda:N" in text


def test_directories_and_wrong_kinds_get_one_message_in_cli_and_api(seed, tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    for args in (["convert", saved, tmp_path / "o.json"], ["run", saved, "--input", "x.npy"],
                 ["summary", saved], ["verify", saved], ["inspect-ir", saved]):
        res = invoke(*args)
        assert res.exit_code == 2 and "SavedModel directory" in res.output and "model.save('model.keras')" in res.output
    with pytest.raises(KerasInteropError, match="SavedModel directory.*model.save"):
        keydnn.from_keras(saved)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "is a directory; expected a .keras, .h5 or KeyDNN .json file" in invoke("run", plain, "--input", "x").output
    with pytest.raises(KerasInteropError, match="is a directory"):
        keydnn.from_keras(plain)
    with pytest.raises(ArtifactError, match="is a directory"):
        keydnn.load(plain)
    with pytest.raises(ArtifactError, match=r"Keras model file.*keydnn.from_keras"):
        keydnn.load(SEED_H5)
    with pytest.raises(KerasInteropError, match=r"keydnn.load"):
        keydnn.from_keras(seed)
    res = invoke("verify", SEED_H5)
    assert res.exit_code == 2 and f"keydnn convert {SEED_H5}" in res.output


# -- 3: run over big inputs; predict(batch_size) ---------------------------------------------------------------

def test_run_maps_the_input_runs_in_batches_and_prints_a_summary(seed, samples, tmp_path):
    x, keras_out = samples
    reps = 40
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=x.dtype, shape=(reps * len(x),) + x.shape[1:])
    big[:] = np.concatenate([x] * reps)
    big.flush()
    assert isinstance(load_inputs([str(tmp_path / "big.npy")], mmap=True)[0], np.memmap)
    res = invoke("run", seed, "--input", tmp_path / "big.npy", "--output", tmp_path / "y.npy", "--batch-size", 37)
    assert res.exit_code == 0, res.output
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(y, np.concatenate([keras_out] * reps), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y, keydnn.load(seed)(np.asarray(big)))  # batches change nothing
    assert len(res.output) < 1000 and f"({len(big)} in all)" in res.output
    res = invoke("run", seed, "--input", tmp_path / "big.npy")
    assert len(res.output) < 1000 and "pass --output" in res.output


def test_run_converts_a_keras_file_in_memory_and_says_what_to_run(samples, tmp_path):
    x, keras_out = samples
    np.save(tmp_path / "x.npy", x[:4])
    res = CliRunner().invoke(cli, ["run", str(SEED_H5), "--input", str(tmp_path / "x.npy"), "--output",
                                   str(tmp_path / "y.npy")])
    assert res.exit_code == 0, res.output
    assert f"keydnn convert {SEED_H5} seed_cnn.json" in res.output
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), keras_out[:4], rtol=1e-5, atol=1e-5)


def test_predict_batch_size_equals_one_call_and_is_documented(seed, samples):
    x, _ = samples
    model = keydnn.load(seed)
    whole = model(x)
    for size in (1, 7, len(x), 10 * len(x)):
        np.testing.assert_array_equal(model.predict(x, batch_size=size), whole)
    np.testing.assert_array_equal(model.predict(x), whole)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            model.predict(x, batch_size=bad)
    assert "batch_size" in keydnn.Model.predict.__doc__ and "memory-mapped" in keydnn.Model.predict.__doc__


# -- 5: input dtype policy ----------------------------------------------------------------------------------

def test_integer_and_other_float_inputs_are_cast_like_keras_and_the_rest_is_refused(seed, samples):
    x, _ = samples
    model = keydnn.load(seed)
    pixels = np.round(x * 16).clip(0, 255)
    want = model(pixels.astype("float32"))
    for dtype in ("uint8", "int32", "int64", "float64", "float16"):
        np.testing.assert_array_equal(model(pixels.astype(dtype)), want, err_msg=dtype)
    np.testing.assert_array_equal(model.predict(pixels.astype("uint8"), batch_size=3), want)
    for bad in (pixels.astype("complex64"), pixels.astype(str), pixels.astype(object)):
        with pytest.raises(ValueError, match=r"cannot be cast to the model's float32"):
            model(bad)


# -- 6: Keras output names; source name, hash and time in the artifact ---------------------------------------------

def test_artifact_names_outputs_as_keras_and_records_the_source(seed, tmp_path, monkeypatch):
    doc = json.loads(seed.read_text())
    last_dense = doc["layers"][-1]["keras_name"]
    assert [o["name"] for o in doc["interface"]["outputs"]] == [last_dense]
    assert keydnn.load(seed).output_names == [last_dense]
    source = doc["producer"]["source"]
    assert source["path_name"] == "seed_cnn.h5"
    assert source["sha256"] == hashlib.sha256(SEED_H5.read_bytes()).hexdigest()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", source["converted_at"])
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    keydnn.from_keras(SEED_H5).save(tmp_path / "a.json")
    keydnn.from_keras(SEED_H5).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()  # reproducible
    assert json.loads((tmp_path / "a.json").read_text())["producer"]["source"]["converted_at"] == "1970-01-01T00:00:00Z"


# -- 7: summary and profile --------------------------------------------------------------------------------

def test_summary_lists_layers_shapes_params_and_total(seed):
    model = keydnn.load(seed)
    text = model.summary()
    assert repr(text) == str(text)  # shows as the table at a prompt
    total = sum(a.size for a in model.graph.weights.values())
    assert f"keydnn params: {total:,}" in text
    for layer in model.keras_layers:
        assert f"{layer['keras_name']} ({layer['keras_class']})" in text
    res = invoke("summary", seed, "--format", "json")
    rows = json.loads(res.output)
    assert rows["total_params"] == total and sum(r["params"] for r in rows["layers"]) == total
    # the seed CNN has no BatchNormalization: Keras's count is keydnn's
    assert sum(r["keras_params"] for r in rows["layers"]) == total and f"Total params: {total:,}" in text
    assert invoke("summary", SEED_H5).output.count("Total params") == 1


def test_profile_times_every_stage_from_the_generated_counters(seed):
    res = invoke("profile", seed, "--batch", 8, "--repeat", 5, "--format", "json")
    assert res.exit_code == 0, res.output
    stages = json.loads(res.output[res.output.index("{"):])["stages"]
    assert len(stages) >= len([n for n in keydnn.load(seed).graph.nodes if n.op.kind in ("conv2d", "dense")])
    assert abs(sum(s["share"] for s in stages) - 1) < 1e-9 and all(s["ms"] >= 0 for s in stages)
    text = invoke("profile", seed, "--repeat", 3).output
    assert "share" in text and "total" in text


# -- 8: threads ---------------------------------------------------------------------------------------------

def test_threads_are_honoured_or_refused_by_name(seed, samples):
    x, _ = samples
    big = np.concatenate([x] * 8)
    one = keydnn.load(seed, threads=1)
    two = keydnn.load(seed, threads=2)
    np.testing.assert_array_equal(one(big), two(big))
    assert one._executable.threads == 1 and two._executable.threads == 2
    for bad in (0, 65, 1.5):
        with pytest.raises(ValueError, match="threads must be an integer from 1 to 64"):
            keydnn.load(seed, threads=bad)
    with pytest.raises(ValueError, match="threads"):
        keydnn.from_keras(SEED_H5, threads=0)
    assert invoke("run", seed, "--input", "nope.npy", "--threads", 0).exit_code == 2


# -- 2: progress ----------------------------------------------------------------------------------------------

_FIRST_CALL = """
import numpy as np, keydnn, sys
m = keydnn.load(sys.argv[1], progress=None if sys.argv[2] == "default" else False)
m(np.zeros((1,) + tuple(m.input_types[0].shape[1:]), "float32"))
"""


@pytest.mark.parametrize("how", ["default", "env-off", "argument-off"])
def test_the_first_call_from_python_says_it_compiles(seed, tmp_path, how):
    env = {**os.environ, "KEYDNN_CACHE_DIR": str(tmp_path / "cache"), "KEYDNN_CACHE": "1", "KEYDNN_CPU_MODE": "codegen"}
    env.pop("KEYDNN_PROGRESS", None)
    if how == "env-off":
        env["KEYDNN_PROGRESS"] = "0"
    proc = subprocess.run([sys.executable, "-c", _FIRST_CALL, str(seed), "off" if how == "argument-off" else "default"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    said = "keydnn: compiling graph for numba-cpu (first time" in proc.stderr
    assert said == (how == "default"), proc.stderr
    if how == "default":  # a second process loads the compiled code and says nothing
        again = subprocess.run([sys.executable, "-c", _FIRST_CALL, str(seed), "default"], env=env,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "compil" not in again.stderr


def test_bars_follow_the_terminal_and_the_switches(monkeypatch, seed, samples, capsys):
    from keydnn import progress

    class Tty:
        def isatty(self):
            return True

        def write(self, text):
            self.seen = getattr(self, "seen", "") + text

        def flush(self):
            pass

    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", Tty())
    assert progress.bars_enabled() and not progress.bars_enabled(False)
    with progress.setting(False):
        assert not progress.bars_enabled() and not progress.messages_enabled()
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.bars_enabled() and not progress.messages_enabled()
    monkeypatch.setenv(progress.ENV, "1")
    monkeypatch.setattr(progress, "DELAY_S", 0)
    x, _ = samples
    keydnn.load(seed).predict(x, batch_size=4)
    assert "keydnn: predict" in sys.stderr.seen


def test_cli_no_progress_silences_the_compile_message(seed, samples, tmp_path):
    env = {**os.environ, "KEYDNN_CACHE_DIR": str(tmp_path / "cache"), "KEYDNN_CACHE": "1", "KEYDNN_CPU_MODE": "codegen"}
    env.pop("KEYDNN_PROGRESS", None)
    np.save(tmp_path / "x.npy", samples[0][:2])
    cmd = [sys.executable, "-m", "keydnn", "--no-progress", "run", str(seed), "--input", str(tmp_path / "x.npy")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "compil" not in proc.stderr, proc.stderr
    proc = subprocess.run([c for c in cmd if c != "--no-progress"], env={**env, "KEYDNN_CACHE_DIR": str(tmp_path / "c2")},
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "keydnn: compiling graph" in proc.stderr, proc.stderr


def test_convert_shows_its_stages_when_bars_are_on(monkeypatch, tmp_path):
    from keydnn import progress

    monkeypatch.setattr(progress, "DELAY_S", 0)
    monkeypatch.setenv(progress.ENV, "1")
    res = CliRunner().invoke(cli, ["convert", str(SEED_H5), str(tmp_path / "a.json")])
    assert res.exit_code == 0
    assert "keydnn: convert" in res.stderr and "writing a.json" in res.stderr
    monkeypatch.setenv(progress.ENV, "0")
    res = CliRunner().invoke(cli, ["convert", str(SEED_H5), str(tmp_path / "b.json")])
    assert res.exit_code == 0 and "keydnn: convert" not in res.stderr
