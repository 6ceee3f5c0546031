"""Issue 19, friction 10: a large model loads in about its own size of memory.

An artifact with ~100 MB of weights in a sidecar is loaded in a fresh process;
the process's peak resident memory during the load (``VmHWM`` after it,
less ``VmRSS`` just before it) must stay within 1.5x the weights. The
sidecar is memory-mapped and the weights are views into the mapping, so the
load costs ~1.0x (the mapped pages the checksums read) plus the JSON; the
bound leaves 50 MB for the interpreter's own allocations, and the same
measurement of an inline (base64) artifact -- which decodes a copy -- shows
that it does catch a copy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keydnn.ir import Graph, Node, TensorType, Value
from keydnn.ir.ops import Dense
from keydnn.model import Model

WEIGHT_BYTES = 100 * 2**20

_MEASURE = r"""
import json, sys
import numpy as np
import keydnn
from keydnn.backends.artifact import load_artifact

def status(key):  # this process's own figures (ru_maxrss would carry the parent's peak across exec)
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))

before = status("VmRSS")
model = keydnn.load(sys.argv[1])
peak = status("VmHWM")
x = np.ones((2, model.input_types[0].shape[1]), "float32")
print(json.dumps({"before": before, "peak": peak, "weights": int(sum(a.nbytes for a in model.graph.weights.values())),
                  "copies": int(sum(a.base is None for a in model.graph.weights.values()))}))
"""


def _big_model() -> Model:
    n_in = 5120
    n_out = WEIGHT_BYTES // (4 * n_in)
    rng = np.random.default_rng(0)
    weights = {"fc.w": rng.standard_normal((n_in, n_out), dtype=np.float32),
               "fc.b": rng.standard_normal(n_out, dtype=np.float32)}
    graph = Graph.build(
        name="big",
        inputs=(Value(name="x", type=TensorType(shape=("N", n_in), dtype="float32", layout="NC")),),
        outputs=("fc",),
        nodes=(Node(name="fc", op=Dense(), inputs=("x", "fc.w", "fc.b"),
                    outputs=(Value(name="fc", type=TensorType(shape=("N", n_out), dtype="float32", layout="NC")),),
                    source="fc"),),
        weights=weights,
    )
    return Model(graph)


def _measure(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    model = _big_model()
    model.save(folder / "side.json", sidecar=True)
    model.save(folder / "inline.json", sidecar=False)  # above the automatic sidecar's threshold
    return folder


def test_sidecar_artifact_loads_in_at_most_one_and_a_half_times_its_weights(artifacts):
    m = _measure(artifacts / "side.json")
    assert m["weights"] >= WEIGHT_BYTES * 0.99
    grown = m["peak"] - m["before"]
    assert grown <= 1.5 * m["weights"], f"load took {grown / 2**20:.0f} MiB for {m['weights'] / 2**20:.0f} MiB"
    assert m["copies"] == 0  # every weight is a view into the mapped sidecar


def test_the_measurement_catches_a_copy(artifacts):
    m = _measure(artifacts / "inline.json")  # base64: the text, its decoded bytes
    assert m["peak"] - m["before"] > 1.5 * m["weights"]


def test_a_mapped_sidecar_still_checks_every_byte(artifacts, tmp_path):
    import shutil

    from keydnn.errors import ArtifactError
    import keydnn

    for name in ("side.json", "side.weights.bin"):
        shutil.copy(artifacts / name, tmp_path / name)
    with open(tmp_path / "side.weights.bin", "r+b") as fh:
        fh.seek(WEIGHT_BYTES // 2)
        byte = fh.read(1)
        fh.seek(WEIGHT_BYTES // 2)
        fh.write(bytes([byte[0] ^ 1]))
    with pytest.raises(ArtifactError, match="SHA-256"):
        keydnn.load(tmp_path / "side.json")
    header = json.loads((tmp_path / "side.json").read_text())
    assert header["sidecar"]["file"] == "side.weights.bin"
