"""Every numba-cuda kernel compiles for a real GPU (sm_90) where libNVVM is installed, even without a GPU.

The simulator runs kernels as Python and cannot catch what only the CUDA
target rejects; ``ptx_check.py`` type-checks and lowers each kernel through
NVVM. It runs in a child process: this one may hold the simulator.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", reason="the simulator compiles nothing")
def test_every_kernel_compiles_to_ptx():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, str(HERE / "ptx_check.py"), "--quick"], env=env,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
