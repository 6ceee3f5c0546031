"""Convert the bundled seed CNN with the CLI, load the artifact, and check it — no TensorFlow needed.

The Keras outputs for 64 test digits were recorded when the model was trained
(``make_seed_model.py``); this script checks that keydnn reproduces them within
1e-5 and predicts the same classes. Exits non-zero on any mismatch.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import keydnn

HERE = Path(__file__).resolve().parent


def main() -> int:
    src = HERE / "seed_cnn.h5"
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "seed_cnn.json"
        cmd = [sys.executable, "-m", "keydnn", "convert", "--src", str(src), "--dst", str(dst)]
        print("$", " ".join(["python", "-m", "keydnn", "convert", "--src", "examples/seed_cnn.h5", "--dst", dst.name]))
        # run from the temporary directory: from the repository root, `python -m keydnn` would import the
        # source tree's keydnn/ (which lacks keydnn.ir etc. until installed) instead of the installed package
        subprocess.run(cmd, check=True, cwd=tmp)
        model = keydnn.load(dst)
        print(model.summary())
        with np.load(HERE / "seed_cnn_samples.npz", allow_pickle=False) as data:
            x, labels, keras_out = data["x"], data["y"], data["keras_out"]
        start = time.perf_counter()
        out = model(x)
        first = time.perf_counter() - start
        start = time.perf_counter()
        model(x[:1])
        single = time.perf_counter() - start
    err = float(np.abs(out - keras_out).max())
    same = bool((out.argmax(1) == keras_out.argmax(1)).all())
    acc_k, acc_d = float((keras_out.argmax(1) == labels).mean()), float((out.argmax(1) == labels).mean())
    print(f"max |keydnn - keras| = {err:.2e} over {len(x)} digits (tolerance 1e-5)")
    print(f"accuracy: keras {acc_k:.3f}, keydnn {acc_d:.3f}; identical predictions: {same}")
    print(f"first call (includes JIT compile or cache load) {first * 1e3:.1f} ms, then batch-1 {single * 1e3:.3f} ms")
    ok = err <= 1e-5 and same and acc_k == acc_d
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
