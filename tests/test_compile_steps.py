"""Compile progress names the part of a compile that runs (helpers k of n, the graph entry, the library)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_fresh_compile_reports_its_steps(tmp_path):
    """In a fresh process with an empty cache: the listener sees step events with counts, and the progress
    line (forced on with KEYDNN_PROGRESS=1) shows them."""
    script = (
        "import numpy as np, keydnn, json\n"
        "from keydnn.backends.numba_cpu import add_compile_listener\n"
        "steps = []\n"
        "add_compile_listener(lambda e: steps.append([e.get('step'), e.get('done'), e.get('total')])"
        " if e.get('event') == 'step' else None)\n"
        f"m = keydnn.from_keras({str(ROOT / 'examples' / 'seed_cnn.h5')!r})\n"
        "m(np.zeros((1, 1, 28, 28), 'f4'))\n"
        "print('STEPS', json.dumps(steps))\n"
    )
    env = {**__import__("os").environ, "KEYDNN_CACHE_DIR": str(tmp_path / "cache"), "KEYDNN_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    import json

    steps = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("STEPS"))[6:])
    names = {s[0] for s in steps}
    assert names & {"helpers", "library helpers"} and names & {"graph entry", "library entry"}
    counted = [s for s in steps if s[2]]
    assert counted and all(0 <= done < total for _, done, total in counted)
    assert "compiling graph 'seed_cnn'" in proc.stderr and "helpers" in proc.stderr
    assert "compiled graph 'seed_cnn' in" in proc.stderr
