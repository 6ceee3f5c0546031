"""The command line: success paths, exit codes, messages without tracebacks, nothing lost on failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import keydnn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SEED_H5 = EXAMPLES / "seed_cnn.h5"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keydnn", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "KEYDNN_DEBUG": ""})


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_convert_then_load_matches_recorded_keras_outputs(tmp_path):
    dst = tmp_path / "seed.json"
    proc = run("convert", "--src", str(SEED_H5), "--dst", str(dst))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr
    with np.load(EXAMPLES / "seed_cnn_samples.npz", allow_pickle=False) as data:
        np.testing.assert_allclose(keydnn.load(dst)(data["x"]), data["keras_out"], rtol=1e-5, atol=1e-5)


def test_convert_with_custom_passes_and_sidecar(tmp_path):
    dst = tmp_path / "seed.json"
    proc = run("convert", "--src", str(SEED_H5), "--dst", str(dst), "--passes", "infer-shapes", "--sidecar")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "seed.weights.bin").exists()
    art = json.loads(dst.read_text())
    assert art["pipeline"] == ["infer-shapes"]
    assert [n["op"]["kind"] for n in art["graph"]["nodes"]].count("relu") == 2


def test_inspect_ir_text_json_and_after(tmp_path):
    proc = run("inspect-ir", str(SEED_H5))
    assert proc.returncode == 0 and proc.stdout.startswith("graph seed_cnn(%input: f32[N,1,28,28] NCHW)")
    proc = run("inspect-ir", str(SEED_H5), "--after", "all")
    assert proc.stdout.count("// ----- IR after") >= 3 and "IR after frontend" in proc.stdout
    proc = run("inspect-ir", str(SEED_H5), "--after", "infer-shapes", "--passes", "infer-shapes,eliminate-identity")
    assert proc.stdout.count("// ----- IR after") == 0 and "flatten" in proc.stdout
    proc = run("inspect-ir", str(SEED_H5), "--format", "json", "--passes", "infer-shapes")
    graph = keydnn.ir.Graph.model_validate_json(proc.stdout)
    assert graph.nodes[0].op.kind == "conv2d"
    dst = tmp_path / "a.json"
    assert run("convert", "--src", str(SEED_H5), "--dst", str(dst)).returncode == 0
    proc = run("inspect-ir", str(dst))
    assert proc.returncode == 0 and "conv2d" in proc.stdout


def test_version_and_help():
    assert run("--version").stdout.strip().endswith(keydnn.__version__)
    help_text = run("convert", "--help").stdout
    assert "--allow-non-linear-activation" in help_text and "Example" in help_text


@pytest.mark.parametrize("args,code,needle", [
    (["convert", "--src", "missing.h5", "--dst", "out.json"], 2, "no such file"),
    (["convert", "--src", "garbage.h5", "--dst", "out.json"], 2, "neither a zip archive nor HDF5"),
    (["convert", "--src", str(SEED_H5), "--dst", "out.json", "--passes", "infer-shapes,nope"], 1, "unknown pass 'nope'"),
    (["convert", "--src", str(SEED_H5), "--dst", "no/such/dir/out.json"], 2, "does not exist"),
    (["convert", "--src", str(SEED_H5), "--dst", "out.json", "--dtype", "int8"], 2, "Invalid value"),
    (["convert", "--dst", "out.json"], 2, "missing SRC"),
    (["inspect-ir", str(SEED_H5), "--after", "nope"], 2, "no such pass"),
    (["inspect-ir", "garbage.json"], 2, "malformed JSON"),
    (["convert", "--src", str(SEED_H5), "--dst", "out.json", "--device", "tpu"], 2, "unknown device"),
])
def test_failures_exit_cleanly(tmp_path, args, code, needle):
    (tmp_path / "garbage.h5").write_bytes(b"not a model at all")
    (tmp_path / "garbage.json").write_text('{"format": "keydnn-artifact", "version": 1, ')
    proc = run(*args, cwd=tmp_path)
    assert_clean_failure(proc, code, needle)
    assert not (tmp_path / "out.json").exists()


def test_failed_convert_keeps_previous_output(tmp_path):
    dst = tmp_path / "out.json"
    assert run("convert", "--src", str(SEED_H5), "--dst", str(dst)).returncode == 0
    before = dst.read_bytes()
    broken = tmp_path / "broken.h5"
    shutil.copy(SEED_H5, broken)
    with open(broken, "r+b") as fh:  # truncate the HDF5 file in the middle
        fh.truncate(os.path.getsize(broken) // 2)
    proc = run("convert", "--src", str(broken), "--dst", str(dst))
    assert_clean_failure(proc, 2, "cannot read Keras model file")
    assert dst.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.h5", "out.json"]


@pytest.mark.keras
def test_unsupported_model_exits_1_and_names_layers(tmp_path):
    tf = pytest.importorskip("tensorflow")
    model = tf.keras.Sequential([tf.keras.layers.Input(shape=(4,)),
                                 tf.keras.layers.Dense(3, activation="relu", name="hidden"),
                                 tf.keras.layers.CategoryEncoding(num_tokens=3, name="emb")])
    src = tmp_path / "m.keras"
    model.save(src)
    proc = run("convert", "--src", str(src), "--dst", str(tmp_path / "out.json"))
    assert_clean_failure(proc, 1, "'hidden' (Dense)", "activation", "'emb' (CategoryEncoding)")
    assert not (tmp_path / "out.json").exists()
    proc = run("convert", "--src", str(src), "--dst", str(tmp_path / "out.json"), "--allow-non-linear-activation")
    assert_clean_failure(proc, 1, "'emb' (CategoryEncoding)")
    proc = run("inspect-ir", str(src))
    assert proc.returncode == 0 and "opaque(%" in proc.stdout and "keras_class=CategoryEncoding" in proc.stdout
