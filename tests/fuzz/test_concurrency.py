"""Concurrency: one loaded model shared by threads, and processes racing to write one artifact.

* ``keydnn.load`` once, then 8 threads call the model with their own inputs
  (several batch sizes, repeated) and every result must equal what the NumPy
  reference interpreter computes for that input -- no thread sees another's
  scratch buffers or a half-initialized compile.
* Two ``keydnn convert`` processes write the same destination at the same
  moment: both succeed, and the file left behind is one complete artifact
  that loads (inline and with a sidecar).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import keydnn
from keydnn.ir import run_reference

from . import seeds

THREADS = 8
ROUNDS = 6


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return seeds.write_artifact_seed(tmp_path_factory.mktemp("concurrency") / "cnn.json", verification=False)


def test_one_model_called_from_8_threads(artifact: Path) -> None:
    model = keydnn.load(artifact)  # compiled lazily: the first calls race to compile too
    barrier = threading.Barrier(THREADS)
    results: dict[tuple[int, int], np.ndarray] = {}
    inputs: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        rng = np.random.default_rng(100 + t)
        try:
            barrier.wait()
            for r in range(ROUNDS):
                batch = 1 + (t + r) % 5  # several batch sizes at once, so shape-keyed buffers differ
                x = rng.standard_normal((batch, *seeds.INPUT_SHAPE)).astype("float32")
                inputs[t, r] = x
                results[t, r] = np.array(model(x), copy=True)
        except BaseException as exc:  # noqa: BLE001 -- reported below with the thread's number
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert len(results) == THREADS * ROUNDS
    for key, x in inputs.items():
        expected = run_reference(model.graph, x)[0]
        np.testing.assert_allclose(results[key], expected, rtol=1e-5, atol=1e-6, err_msg=f"thread/round {key}")


@pytest.mark.parametrize("sidecar", [False, True])
def test_two_processes_convert_to_the_same_destination(tmp_path: Path, sidecar: bool) -> None:
    src = seeds.write_keras_seed(tmp_path / "m.keras", "keras3-zip")
    dst = tmp_path / "out.json"
    extra = ["--sidecar"] if sidecar else []
    cmd = [sys.executable, "-m", "keydnn", "convert", "--src", str(src), "--dst", str(dst), *extra]
    env = {**os.environ, "KEYDNN_DEBUG": "", "KEYDNN_ISOLATE_READER": "0"}  # the writes are the point
    for _ in range(2):
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        model = keydnn.load(dst)
        x = np.random.default_rng(0).standard_normal((2, *seeds.INPUT_SHAPE)).astype("float32")
        np.testing.assert_allclose(model(x), run_reference(model.graph, x)[0], rtol=1e-5, atol=1e-6)
        expected = ["m.keras", "out.json"] + (["out.weights.bin"] if sidecar else [])
        assert sorted(p.name for p in tmp_path.iterdir()) == expected
