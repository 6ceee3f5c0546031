"""Issue-6 commands: convert --verify (with a per-layer divergence report), verify, run, bench, schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import keydnn
from keydnn.cli import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEED_H5 = EXAMPLES / "seed_cnn.h5"


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def seed_artifact(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("art") / "seed.json"
    assert invoke("convert", "--src", str(SEED_H5), "--dst", str(dst)).exit_code == 0
    return dst


def test_run_writes_npy_and_prints_json(seed_artifact, tmp_path):
    with np.load(EXAMPLES / "seed_cnn_samples.npz", allow_pickle=False) as data:
        x, keras_out = data["x"][:5], data["keras_out"][:5]
    np.save(tmp_path / "x.npy", x)
    res = invoke("run", str(seed_artifact), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy"))
    assert res.exit_code == 0 and "argmax" in res.output
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), keras_out, rtol=1e-5, atol=1e-5)
    res = invoke("run", str(seed_artifact), "--input", str(tmp_path / "x.npy"), "--format", "json")
    payload = json.loads(res.output)
    assert payload["output_shape"] == [5, 10] and payload["argmax"] == keras_out.argmax(1).tolist()


def test_run_rejects_wrong_shape_and_pickles(seed_artifact, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 28, 28, 1), "f4"))
    res = CliRunner().invoke(cli, ["run", str(seed_artifact), "--input", str(tmp_path / "bad.npy")])
    assert res.exit_code == 2 and "expected (batch, 1, 28, 28)" in res.output
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    res = CliRunner().invoke(cli, ["run", str(seed_artifact), "--input", str(tmp_path / "obj.npy")])
    assert res.exit_code == 2 and "object arrays are refused" in res.output


def test_bench_reports_rows(seed_artifact):
    res = invoke("bench", str(seed_artifact), "--batch", "1,4", "--repeat", "3", "--warmup", "1", "--format", "json")
    rows = json.loads(res.output)["rows"]
    assert [r["batch"] for r in rows] == [1, 4] and all(r["median_ms"] > 0 for r in rows)
    res = CliRunner().invoke(cli, ["bench", str(seed_artifact), "--batch", "0"])
    assert res.exit_code == 2


def test_schema_command_prints_the_published_schema():
    res = invoke("schema")
    published = (Path(keydnn.__file__).parent / "schema" / "artifact-v1.json").read_text()
    assert json.loads(res.output) == json.loads(published)


def test_layers_and_passes_commands():
    assert "`Conv2D`" in invoke("layers").output
    assert "canonicalize-layout" in invoke("passes").output


def test_verify_without_vectors_is_a_usage_error(seed_artifact):
    res = CliRunner().invoke(cli, ["verify", str(seed_artifact)])
    assert res.exit_code == 2 and "--verify" in res.output


@pytest.mark.keras
@pytest.mark.onednn  # the seed model is channels_first: Keras runs it through XLA where oneDNN is off
class TestVerifyAgainstKeras:
    def test_convert_verify_records_vectors_and_replays(self, tmp_path):
        pytest.importorskip("tensorflow")
        dst = tmp_path / "v.json"
        res = invoke("convert", "--src", str(SEED_H5), "--dst", str(dst), "--verify")
        assert res.exit_code == 0 and "OK: max |keydnn - keras|" in res.output
        loaded = keydnn.load(dst)
        assert loaded.verification["inputs"][0].shape == (8, 1, 28, 28)
        res = invoke("verify", str(dst))
        assert res.exit_code == 0 and res.output.startswith("OK")

    def test_a_perturbed_weight_is_caught_and_located(self, tmp_path, monkeypatch):
        pytest.importorskip("tensorflow")
        from keydnn.frontends.keras import registry

        original = registry.LayerContext.add_constant

        def perturbed(self, suffix, array):
            if self.layer.class_name == "Conv2D" and suffix == "kernel" and self.layer.index == 3:
                array = np.asarray(array) + 0.05  # a subtle conversion bug in the second conv
            return original(self, suffix, array)

        monkeypatch.setattr(registry.LayerContext, "add_constant", perturbed)
        dst = tmp_path / "bad.json"
        res = CliRunner().invoke(cli, ["convert", "--src", str(SEED_H5), "--dst", str(dst), "--verify"])
        assert res.exit_code == 1, res.output
        assert "MISMATCH" in res.output and "first diverging layer: 3 'conv2d_1' (Conv2D)" in res.output
        assert "was not written" in res.output and not dst.exists()

    def test_replay_detects_a_changed_model(self, tmp_path):
        pytest.importorskip("tensorflow")
        dst = tmp_path / "v.json"
        assert invoke("convert", "--src", str(SEED_H5), "--dst", str(dst), "--verify").exit_code == 0
        model = keydnn.load(dst)
        model.verification["outputs"][0] = model.verification["outputs"][0] + 1e-3  # as if the runtime drifted
        model.save(tmp_path / "drift.json")
        res = CliRunner().invoke(cli, ["verify", str(tmp_path / "drift.json")])
        assert res.exit_code == 1 and res.output.startswith("MISMATCH")


def test_verify_without_tensorflow_gives_an_install_hint(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tf(name, *args, **kwargs):
        if name.split(".")[0] in ("tensorflow", "tf_keras"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tf)
    res = CliRunner().invoke(cli, ["convert", "--src", str(SEED_H5), "--dst", str(tmp_path / "x.json"), "--verify"])
    assert res.exit_code == 1 and "pip install 'keydnn[keras]'" in res.output
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_first_run_reports_compiling_and_a_cached_run_does_not(seed_artifact, tmp_path):
    """The CLI shows the one-time compile of generated code (seconds); a second process loads it silently."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "KEYDNN_CACHE_DIR": str(tmp_path / "cache"), "KEYDNN_CACHE": "1", "KEYDNN_CPU_MODE": "codegen"}
    cmd = [sys.executable, "-m", "keydnn", "bench", str(seed_artifact), "--batch", "1", "--repeat", "3"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "keydnn: compiling graph for numba-cpu (first time" in first.stderr
    assert "keydnn: compiled graph" in first.stderr
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "compil" not in second.stderr
