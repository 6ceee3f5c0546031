"""Issue 19, scale-out: a model pickles as its artifact and runs in process pools and on Dask.

The example ``examples/score_at_scale.py`` scores a memory-mapped dataset on a
local Dask cluster (two worker processes) and must give exactly the
single-process predictions; this test runs it and checks them again itself.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import keydnn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def model() -> keydnn.Model:
    return keydnn.from_keras(EXAMPLES / "seed_cnn.h5", threads=1)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    with np.load(EXAMPLES / "seed_cnn_samples.npz", allow_pickle=False) as data:
        return data["x"]


def _predict(model: keydnn.Model, x: np.ndarray) -> np.ndarray:
    return model(x)


def test_a_model_pickles_as_its_artifact(model, digits):
    data = pickle.dumps(model)
    assert b'"format": "keydnn-artifact"' in data  # the artifact's JSON, checked like a file when loaded
    back = pickle.loads(data)
    assert type(back) is type(model) and back.threads == 1 and back.output_names == model.output_names
    assert back.graph == model.graph
    np.testing.assert_array_equal(back(digits), model(digits))


def test_an_unpickled_model_loads_its_compiled_code_from_the_cache(model, tmp_path):
    env = {**os.environ, "KEYDNN_CACHE_DIR": str(tmp_path / "cache"), "KEYDNN_CACHE": "1", "KEYDNN_CPU_MODE": "codegen"}
    env.pop("KEYDNN_PROGRESS", None)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model))
    code = ("import pickle, sys, numpy as np; m = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "print(m(np.zeros((2, 1, 28, 28), 'float32')).argmax(1))")
    first = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pkl")], env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0 and "compiling" in first.stderr, first.stderr
    worker = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pkl")], env=env, capture_output=True,
                            text=True, timeout=300)
    assert worker.returncode == 0 and "compil" not in worker.stderr, worker.stderr  # no compile twice
    assert worker.stdout == first.stdout


def test_process_pools_score_like_one_process(model, digits):
    chunks = np.array_split(np.concatenate([digits] * 4), 5)
    want = [model(c) for c in chunks]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn) as pool:
        got = list(pool.map(_predict, [model] * len(chunks), chunks))
    with spawn.Pool(2) as pool:
        got_mp = pool.starmap(_predict, [(model, c) for c in chunks])
    for w, g, m in zip(want, got, got_mp):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(m, w)


def test_dask_array_map_blocks(model, digits):
    da = pytest.importorskip("dask.array")
    x = da.from_array(np.concatenate([digits] * 3), chunks=(50, 1, 28, 28))
    y = x.map_blocks(model.predict, dtype=np.float32, drop_axis=[2, 3], chunks=(x.chunks[0], (10,)))
    np.testing.assert_array_equal(y.compute(scheduler="processes"), model(np.asarray(x)))


def test_score_at_scale_example_on_a_local_cluster(model, tmp_path):
    pytest.importorskip("dask.distributed")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "score_at_scale.py"), "--samples", "12000", "--chunk",
                           "1500", "--workers", "2", "--check", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dask: 2 workers, 8 blocks of 1500" in proc.stdout
    assert "every prediction is identical to the single-process result" in proc.stdout
    scores = np.load(tmp_path / "scores.npy")
    images = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert scores.shape == (12000, 10)
    np.testing.assert_array_equal(scores, model.predict(images, batch_size=4096))
    assert len(np.unique(scores.argmax(1))) > 3  # real digits, not one class for everything
