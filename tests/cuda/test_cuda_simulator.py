"""Run every numba-cuda test on Numba's CUDA simulator, in a child process.

The simulator is chosen process-wide when numba.cuda is first imported, so
turning it on inside this pytest process would also change what every other
test sees (a machine without a GPU would suddenly "have" one). A child
process with ``NUMBA_ENABLE_CUDASIM=1`` runs tests/cuda instead; in it this
test skips itself. The simulated shapes are tiny: the simulator runs each
CUDA thread as a Python thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="this process is the simulator run")
def test_every_cuda_test_passes_on_the_simulator():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", str(HERE),
         f"--ignore={HERE / 'test_cuda_simulator.py'}", f"--ignore={HERE / 'test_cuda_ptx.py'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"simulator run failed: {summary}\n{proc.stdout[-8000:]}\n{proc.stderr[-2000:]}"
    assert " passed" in summary and "skipped" not in summary, summary
