"""Hostile KeyDNN artifacts: mutated, truncated and tampered files, and the integrity guarantees.

``load_artifact`` and ``keydnn.load`` must accept a file or refuse it with an
``ArtifactError`` that names the file (``harness.check_load_artifact``); a
changed byte in any tensor payload must be caught by its checksum and named;
format versions outside the supported range are refused with the version in
the message.
"""

from __future__ import annotations

import base64
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keydnn.backends.artifact import FORMAT_VERSION, load_artifact, save_artifact
from keydnn.errors import ArtifactError
from keydnn.ir import Graph, Node, TensorType, Value
from keydnn.ir.ops import Dense
from keydnn.ir.passes import run_pipeline

from . import harness, inputs
from .conftest import fuzz_settings

EXAMPLES = {"bytes": 150, "truncate": 80, "json": 500, "tensor": 200, "version": 60}

#: Causes that ``load_artifact``'s last-resort wrapper still has to catch, found by this fuzzer and
#: reported to the IR owners (issue 7). The loader keeps its contract (an ArtifactError naming the
#: file) but the message is generic; each is listed, and reported as an expected failure.
KNOWN_IR_ESCAPES: dict[str, str] = {
    # (empty: the wrong-operand-count IndexError from the IR shape rules, found here, is now refused by the
    # loader itself; ir/verify.py should still stop calling op.infer() on a node with the wrong arity)
}


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_hostile_artifacts(kind: str, fuzz_seeds: inputs.Seeds) -> None:
    """Byte, truncation, schema-level, tensor-entry and version mutations of real artifacts."""
    outcomes: dict[str, int] = {}
    known: dict[str, str] = {}

    @fuzz_settings(EXAMPLES[kind])
    @given(rng=st.randoms(use_true_random=False))
    def one(rng: random.Random) -> None:
        inp = inputs.GENERATORS["artifact"][kind](rng, fuzz_seeds)
        with tempfile.TemporaryDirectory() as tmp:
            outcome = harness.check_load_artifact(inp.write(Path(tmp)))
        if outcome == "safety-net":
            # The last-resort wrapper kept the contract, but every cause it catches deserves a specific
            # message: an unlisted cause fails so it gets named and fixed.
            message, signature = harness.last_safety_net
            assert signature in KNOWN_IR_ESCAPES, f"{inp.note}: {signature}: {message}"
            known[signature] = f"{inp.note}: {message.splitlines()[0]}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    one()
    assert outcomes, "no input was judged"
    print(f"artifact/{kind}: {sum(outcomes.values())} inputs, {outcomes}")  # shown with -s / -rA
    if known:
        pytest.xfail("known IR escapes behind the loader's last-resort wrapper: "
                     + "; ".join(f"{sig} [{KNOWN_IR_ESCAPES[sig]}] e.g. {ex}" for sig, ex in known.items()))


def test_artifact_seeds_are_valid(fuzz_seeds: inputs.Seeds, tmp_path: Path) -> None:
    for kind, files in fuzz_seeds.artifacts.items():
        folder = tmp_path / kind
        folder.mkdir()
        path = inputs.FuzzInput("a.json", dict(files)).write(folder)
        assert harness.check_load_artifact(path) == "ok", kind


# ----------------------------------------------------------------------------- checksums

_DTYPES = st.sampled_from(["float32", "float64"])


def _dense_graph(kernel: np.ndarray, bias: np.ndarray) -> Graph:
    dtype = kernel.dtype.name
    graph = Graph.build(
        name="g",
        inputs=(Value(name="x", type=TensorType(shape=("N", kernel.shape[0]), dtype=dtype, layout="NC")),),
        outputs=("y",),
        nodes=(Node(name="fc", op=Dense(), inputs=("x", "fc.w", "fc.b"), outputs=(Value(name="y"),)),),
        weights={"fc.w": kernel, "fc.b": bias},
    )
    return run_pipeline(graph, "infer-shapes")


@st.composite
def _tensors(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    dtype = draw(_DTYPES)
    n_in, n_out = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    elements = st.floats(width=32 if dtype == "float32" else 64, allow_nan=True, allow_infinity=True)
    kernel = draw(hnp.arrays(dtype, (n_in, n_out), elements=elements))
    bias = draw(hnp.arrays(dtype, (n_out,), elements=elements))
    return kernel, bias


@fuzz_settings(200)
@given(tensors=_tensors(), which=st.sampled_from(["fc.w", "fc.b"]), position=st.floats(0, 1, exclude_max=True),
       replacement=st.integers(1, 63), sidecar=st.booleans())
def test_any_changed_payload_byte_is_caught_and_names_the_tensor(
    tensors: tuple[np.ndarray, np.ndarray], which: str, position: float, replacement: int, sidecar: bool
) -> None:
    """A flipped character in any base64 payload (or byte in the sidecar) is refused, naming the tensor.

    Values are bit patterns (NaN payloads, infinities included) and the
    round trip of the untouched file must reproduce every bit.
    """
    kernel, bias = tensors
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.json"
        save_artifact(path, _dense_graph(kernel, bias), pipeline=["infer-shapes"], layers=[], sidecar=sidecar)
        loaded = load_artifact(path).graph.weights
        assert loaded["fc.w"].tobytes() == kernel.tobytes() and loaded["fc.b"].tobytes() == bias.tobytes()
        doc = json.loads(path.read_text())
        entry = next(e for e in doc["weights"] if e["name"] == which)
        if sidecar:
            blob = bytearray((Path(tmp) / "a.weights.bin").read_bytes())
            at = entry["offset"] + int(position * entry["nbytes"])
            blob[at] ^= replacement  # 1..63: always changes the byte
            (Path(tmp) / "a.weights.bin").write_bytes(bytes(blob))
        else:
            data = entry["data"]
            at = int(position * len(data.rstrip("=")))
            new = alphabet[(alphabet.index(data[at]) + replacement) % 64]
            entry["data"] = data[:at] + new + data[at + 1:]
            path.write_text(json.dumps(doc, indent=1))
            if base64.b64decode(entry["data"]) == base64.b64decode(data):
                # Only the unused low bits of the last character changed: the payload is identical, and so
                # must be what loads (nothing to detect; base64 decoders ignore those bits).
                assert load_artifact(path).graph.weights[which].tobytes() == loaded[which].tobytes()
                return
        with pytest.raises(ArtifactError) as info:
            load_artifact(path)
        message = str(info.value)
        assert repr(which) in message and str(path) in message
        assert "SHA-256" in message or "invalid base64" in message, message


@pytest.mark.parametrize("version", [0, -1, FORMAT_VERSION + 1, 7, 2**40])
def test_unsupported_versions_are_refused_with_the_version(version: int, fuzz_seeds: inputs.Seeds,
                                                           tmp_path: Path) -> None:
    doc = json.loads(fuzz_seeds.artifacts["inline"]["a.json"])
    doc["version"] = version
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    message = str(info.value)
    assert f"version {version}" in message and str(path) in message
    if version > FORMAT_VERSION:
        assert "newer than this keydnn supports" in message and "upgrade keydnn" in message
    else:
        assert "versions start at 1" in message


def test_payload_with_extra_valid_base64_is_refused(fuzz_seeds: inputs.Seeds, tmp_path: Path) -> None:
    """Appending data (even valid base64 of the right alphabet) changes the length check, not just the hash."""
    doc = json.loads(fuzz_seeds.artifacts["inline"]["a.json"])
    entry = doc["weights"][0]
    raw = base64.b64decode(entry["data"]) + b"\0\0\0\0"
    entry["data"] = base64.b64encode(raw).decode()
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=rf"{entry['name']!r}.*base64 data has"):
        load_artifact(path)
