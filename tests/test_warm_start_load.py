"""Issue 16's warm start: what loading an artifact costs, and that making it cheaper kept every check.

A fresh process that loads a large model used to hash every weight twice
(the tensor entry's checksum, then the graph constant's), decode base64 text
it held beside the decoded copy, and pack the weights through float64
staging arrays. These tests pin the cheaper path: large models are saved with
a sidecar by default (older inline files still load), each weight is hashed
once, the sidecar's own checksum runs beside the tensors' and is never left
running, and packing the weights for the generated code holds at most about
twice the weights. ``benchmarks/warm_start.py`` measures the whole warm start.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import keydnn
from keydnn.backends.artifact import codec, load_artifact, sidecar_path
from keydnn.backends.artifact import io as artifact_io
from keydnn.errors import ArtifactError
from keydnn.ir import graph as ir_graph
from keydnn.model import Model

from test_artifact import make_graph, samples, save

FIXTURE = Path(__file__).parent / "fixtures" / "artifact_v1_inline.json"
SEED_H5 = Path(__file__).resolve().parents[1] / "examples" / "seed_cnn.h5"


def _weight_bytes(graph) -> int:
    return sum(int(a.nbytes) for a in graph.weights.values())


@pytest.mark.parametrize("threshold, expect_sidecar", [(1, True), (10**12, False)])
def test_save_chooses_a_sidecar_by_weight_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threshold: int,
                                               expect_sidecar: bool) -> None:
    monkeypatch.setattr(artifact_io, "AUTO_SIDECAR_BYTES", threshold)
    model = Model(make_graph())
    path = Path(model.save(tmp_path / "m.json"))
    doc = json.loads(path.read_text())
    assert sidecar_path(path).exists() == expect_sidecar
    assert (doc["sidecar"] is not None) == expect_sidecar
    assert {w["encoding"] for w in doc["weights"]} == {"sidecar" if expect_sidecar else "base64"}
    again = keydnn.load(path)
    assert again.graph.weights == model.graph.weights


def test_an_explicit_choice_wins_over_the_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact_io, "AUTO_SIDECAR_BYTES", 1)
    model = Model(make_graph())
    model.save(tmp_path / "inline.json", sidecar=False)
    assert not sidecar_path(tmp_path / "inline.json").exists()
    monkeypatch.setattr(artifact_io, "AUTO_SIDECAR_BYTES", 10**12)
    model.save(tmp_path / "side.json", sidecar=True)
    assert sidecar_path(tmp_path / "side.json").exists()


def test_the_default_threshold_keeps_small_models_in_one_file(tmp_path: Path) -> None:
    graph = make_graph()
    assert _weight_bytes(graph) < artifact_io.AUTO_SIDECAR_BYTES
    assert not artifact_io.default_sidecar(graph)
    Model(graph).save(tmp_path / "m.json")
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_cli_convert_sidecar_and_inline_flags(tmp_path: Path) -> None:
    from keydnn.cli import cli

    runner = CliRunner()
    for flag, expect in (("--sidecar", True), ("--inline", False), (None, False)):  # the seed CNN is small
        dst = tmp_path / f"{flag or 'default'}.json"
        args = ["convert", str(SEED_H5), str(dst)] + ([flag] if flag else [])
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert sidecar_path(dst).exists() == expect, flag
        said = result.output + (result.stderr if result.stderr_bytes is not None else "")
        assert (f"weights in {dst.stem}.weights.bin beside it" in said) == expect, said


def test_an_artifact_written_before_the_automatic_sidecar_still_loads_and_runs() -> None:
    """``fixtures/artifact_v1_inline.json`` was written by keydnn at commit 7bae071 (``Model.save`` then always
    inlined base64); it carries verification vectors computed with NumPy."""
    model = keydnn.load(FIXTURE)
    assert len(model.graph.weights) == 4 and model.verification is not None
    x, = model.verification["inputs"]
    expected, = model.verification["outputs"]
    np.testing.assert_allclose(model(x), expected, rtol=1e-5, atol=1e-6)


def test_loading_hashes_each_weight_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inline: each tensor's bytes once (its entry); sidecar: each tensor once plus the file once (beside
    them); the graph never re-hashes a weight whose entry checksum is its constant's."""
    hashed: list[int] = []
    real = codec.sha256_hex

    def counting(data):
        hashed.append(len(data))
        return real(data)

    def forbidden(array):
        raise AssertionError("a weight was hashed a second time")

    graph = make_graph()
    inline = save(tmp_path / "inline.json", graph)
    side = save(tmp_path / "side.json", graph, sidecar=True)
    monkeypatch.setattr(codec, "sha256_hex", counting)
    monkeypatch.setattr(ir_graph, "array_sha256", forbidden)
    assert load_artifact(inline).graph.weights == graph.weights
    assert sorted(hashed) == sorted(int(a.nbytes) for a in graph.weights.values())
    hashed.clear()
    assert load_artifact(side).graph.weights == graph.weights
    assert sorted(hashed) == sorted([int(a.nbytes) for a in graph.weights.values()]
                                    + [sidecar_path(side).stat().st_size])


def test_a_constant_checksum_that_disagrees_with_its_entry_is_still_checked(tmp_path: Path) -> None:
    """Skipping the second hash relies on the entry's checksum being the constant's: where they differ, the
    graph hashes the weight itself and refuses it."""
    path = save(tmp_path / "m.json", sidecar=True)
    doc = json.loads(path.read_text())
    const = next(c for c in doc["graph"]["constants"] if c["name"] == "fc.w")
    const["sha256"] = hashlib.sha256(b"something else").hexdigest()
    path.write_text(json.dumps(doc, indent=1))
    with pytest.raises(ArtifactError, match="the weights do not match the graph"):
        load_artifact(path)


def _sha_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "keydnn-sha256"]


def test_the_sidecar_digest_thread_never_outlives_a_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec.BackgroundDigest, "THRESHOLD", 0)  # a thread even for this small sidecar
    path = save(tmp_path / "m.json", sidecar=True, verification=samples())
    assert load_artifact(path).verification is not None
    assert _sha_threads() == []
    blob = bytearray(sidecar_path(path).read_bytes())
    doc = json.loads(path.read_text())
    entry = next(w for w in doc["weights"] if w["name"] == "fc.w")
    blob[entry["offset"] + 3] ^= 0x10
    sidecar_path(path).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="weight 'fc.w' failed its SHA-256 check"):
        load_artifact(path)
    assert _sha_threads() == []


def test_background_digest_is_sha256() -> None:
    data = np.random.default_rng(0).bytes(3 * codec.BackgroundDigest.THRESHOLD + 5)
    assert codec.BackgroundDigest(data).result() == hashlib.sha256(data).hexdigest()
    small = b"abc"
    assert codec.BackgroundDigest(small).result() == hashlib.sha256(small).hexdigest()


_PACK = r"""
import sys
import numpy as np
from keydnn.ir import Graph, Node, TensorType, Value
from keydnn.ir.ops import Dense
from keydnn.backends.numba_cpu.codegen.program import generate
from keydnn.backends.numba_cpu.runtime.executable import EMITTERS

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))

n_in, n_out = 4096, 4096  # 64 MiB of float32 weights, a multiple of every tier's panel width (no padding)
w = np.random.default_rng(0).standard_normal((n_in, n_out), dtype=np.float32)
graph = Graph.build(
    name="big", inputs=(Value(name="x", type=TensorType(shape=("N", n_in), dtype="float32", layout="NC")),),
    outputs=("fc",), nodes=(Node(name="fc", op=Dense(), inputs=("x", "fc.w"),
    outputs=(Value(name="fc", type=TensorType(shape=("N", n_out), dtype="float32", layout="NC")),), source="fc"),),
    weights={"fc.w": w})
del w
before = status("VmRSS")
program = generate(graph, ((n_in,),), (True,), lanes=16, emitters=EMITTERS, cache=False)
print(status("VmHWM") - before, program.weights.nbytes, graph.weights["fc.w"].nbytes)
"""


def test_packing_weights_for_generated_code_holds_about_two_copies() -> None:
    """The packed blob is one copy; packing may hold one more transiently (a transposed panel), never the
    float64 staging arrays and the concatenation's second blob that made ResNet50's warm start peak at 438 MiB.
    Measured in a fresh process (peak RSS growth while generating), as tests/test_large_artifact.py does."""
    proc = subprocess.run([sys.executable, "-c", _PACK], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    grown, packed, weights = map(int, proc.stdout.split())
    assert packed >= weights
    assert grown <= 2.3 * weights, f"generating took {grown / 2**20:.0f} MiB for {weights / 2**20:.0f} MiB of weights"


def test_stage_templates_do_not_depend_on_the_line_cache() -> None:
    """Code generation parses each distinct stage line once per process (``stageroll._SPLIT_CACHE``); a line
    naming an array is cached per array slot, and a cached parse gives what a fresh one gives."""
    from keydnn.backends.numba_cpu.codegen import stageroll

    lines = ["    for k in range(lo, hi):", "        fcall(F[3], p_A, k * 12, 1.5)",
             "        fcall(F[3], p_A, k * 13, 2.5e-3)"]
    stageroll._SPLIT_CACHE.clear()
    one = stageroll.stage_parameters(lines, {"A": 1})
    two = stageroll.stage_parameters(lines, {"A": 2})
    assert one is not None and two is not None and one[1] != two[1]  # the array's slot is a parameter
    assert one[0] == two[0]  # the same template text
    stageroll._SPLIT_CACHE.clear()
    assert stageroll.stage_parameters(lines, {"A": 2}) == two
    assert stageroll.stage_parameters(["    x = 1  # a comment before a token"], {}) is None
    assert stageroll.stage_parameters(["    x = 'text'"], {}) is None
    trailing = stageroll.stage_parameters(["    x = name12 + 7  #"], {})  # nothing after the '#': kept
    assert trailing == (["    x = name12 + ld_i64(k_qi, 0)  #"], [7], [])


def test_the_code_generator_does_not_import_the_runtime_directly() -> None:
    """Generating code (which a warm start does, to find its cache entry) imports no runtime module: the text
    side of shared stage functions lives in ``codegen.stagefn``; pyproject's import-linter contract
    ``cpu-codegen-below-runtime`` says the same for ``lint-imports``."""
    import ast
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert "cpu-codegen-below-runtime" in {c["id"] for c in config["contracts"]}
    offenders = []
    for path in sorted((root / "backends" / "numba_cpu" / "codegen").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("keydnn.backends.numba_cpu.runtime")]
    assert offenders == []
