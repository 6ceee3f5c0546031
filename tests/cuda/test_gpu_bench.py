"""benchmarks/gpu_bench.py stays runnable without a GPU: ``--dry-run`` builds every model (the ResNet DAG
included), round-trips its artifact and checks the CPU backend against the reference. (Not run again by the
simulator child: it needs no CUDA.)"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BENCH = ROOT / "benchmarks" / "gpu_bench.py"


def test_dry_run_builds_every_model_and_matches_the_reference():
    proc = subprocess.run([sys.executable, str(BENCH), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = dict(re.findall(r"^(\w+): \d+ nodes, cpu max\|diff\| ([-+.\deE]+)", proc.stdout, flags=re.M))
    assert set(rows) == {"seed_cnn", "cifar_cnn", "resnet8"}, proc.stdout
    assert all(float(diff) < 1e-4 for diff in rows.values()), proc.stdout


def test_resnet_row_is_a_dag_of_residual_adds():
    sys.path.insert(0, str(BENCH.parent))
    try:
        import gpu_bench
    finally:
        sys.path.remove(str(BENCH.parent))
    graph = gpu_bench.resnet8()
    kinds = [n.op.kind for n in graph.nodes]
    assert kinds.count("add") == 3 and "batch_norm" not in kinds  # BN folded by the default pipeline
    assert sum(1 for n in graph.nodes if n.op.kind == "conv2d" and tuple(n.op.strides) == (2, 2)) == 4
    readers = [i for n in graph.nodes for i in n.inputs]
    assert max(readers.count(n.outputs[0].name) for n in graph.nodes) == 2  # block inputs feed two branches
