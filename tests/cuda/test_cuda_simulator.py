"""Run every numba-cuda test on Numba's CUDA simulator, in a child process; and a Keras-built ResNet.

The simulator is chosen process-wide when numba.cuda is first imported, so
turning it on inside this pytest process would also change what every other
test sees (a machine without a GPU would suddenly "have" one). A child
process with ``NUMBA_ENABLE_CUDASIM=1`` runs tests/cuda instead; in it this
test skips itself. The simulated shapes are tiny: the simulator runs each
CUDA thread as a Python thread.

Issue 8's done-when model, the tiny channels_last ResNet of
tests/test_functional.py (on a smaller image), is built with Keras here,
where TensorFlow may be imported, saved as a ``.keras`` file with Keras's
own output, and converted and run by a simulator child that never imports
TensorFlow. (The other Functional models run from test_cuda_functional.py,
built as the frontend builds them: the simulator spends seconds on each
Keras-sized convolution.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PARENT_ONLY = ("test_cuda_simulator.py", "test_cuda_ptx.py", "test_gpu_bench.py")  # not run by the child


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="this process is the simulator run")
def test_every_cuda_test_passes_on_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-o", "addopts=-ra", str(HERE),
         *(f"--ignore={HERE / name}" for name in PARENT_ONLY)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"simulator run failed: {summary}\n{proc.stdout[-8000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in summary and "skipped" not in summary, summary


_SIMULATED = textwrap.dedent("""
    import sys
    import numpy as np
    import keydnn
    from keydnn.ir import run_reference
    sys.setswitchinterval(1e-4)  # the simulator's barriers poll: see cuda_helpers.fast_simulator
    path, data = sys.argv[1], np.load(sys.argv[1] + ".npz")
    model = keydnn.from_keras(path, device="cuda")
    got = model(data["x"])
    assert not [m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules], "imported TensorFlow/Keras"
    for what, want in (("Keras", data["y"]), ("the reference", run_reference(model.graph, data["x"])[0])):
        assert got.shape == want.shape, (what, got.shape, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"CUDA vs {what}")
    print("tiny_resnet on numba-cuda matches Keras and the reference")
""")


@pytest.mark.keras
@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="this process is the simulator run")
def test_keras_resnet_matches_keras_on_the_simulator(tmp_path):
    """Issue 8's done-when: a channels_last ResNet-style .keras, converted without TensorFlow through the
    default pipeline, matches Keras (and the reference) within 1e-4 on CUDA."""
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from fixtures.make_fixtures import randomize_weights, tiny_resnet  # tests/ is on sys.path (conftest.py)

    live = tiny_resnet(tf.keras, size=4)  # a smaller image: the simulator runs each CUDA thread in Python
    randomize_weights(live, seed=7)
    # fan-in scaled kernels: with unscaled ones the logits are in the hundreds and the softmax one-hot,
    # which would hide any kernel error
    live.set_weights([w / np.sqrt(np.prod(w.shape[:-1])) if w.ndim > 1 else w for w in live.get_weights()])
    path = tmp_path / "tiny_resnet.keras"
    live.save(path)
    x = np.random.default_rng(11).normal(size=(2, 4, 4, 3)).astype("f4")
    y = np.asarray(live(x, training=False))
    assert 0.01 < y.min() and y.max() < 0.9, y  # far from saturated
    np.savez(str(path) + ".npz", x=x, y=y)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-c", _SIMULATED, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
