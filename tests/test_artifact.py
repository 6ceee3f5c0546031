"""The KeyDNN artifact: round trips, determinism, every load error, atomic and concurrent writes."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import pickle
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import keydnn.atomic as atomic
from keydnn.atomic import atomic_write_bytes, atomic_write_text, atomic_writer
from keydnn.backends.artifact import (
    FORMAT_VERSION, artifact_json_schema, load_artifact, read_artifact_header, save_artifact, sidecar_path,
)
from keydnn.backends.artifact import io as artifact_io
from keydnn.backends.artifact import reader as artifact_reader
from keydnn.errors import ArtifactError
from keydnn.ir import Graph, Node, TensorType, Value
from keydnn.ir.ops import Conv2d, Dense, Flatten, Relu, Softmax
from keydnn.ir.passes import run_pipeline

LAYERS = [
    {"keras_name": "conv2d", "keras_class": "Conv2D", "nodes": ["conv"]},
    {"keras_name": "flatten", "keras_class": "Flatten", "nodes": ["flat"]},
    {"keras_name": "dense", "keras_class": "Dense", "nodes": ["fc", "softmax"]},
]
SOURCE = {"format": "keras3-h5", "keras_version": "3.3.3", "path_name": "model.h5"}


def make_graph(dtype: str = "float32", seed: int = 0) -> Graph:
    """conv -> relu -> flatten -> dense -> softmax, typed by infer-shapes."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv.w": rng.standard_normal((4, 3, 3, 3)).astype(dtype),
        "conv.b": rng.standard_normal(4).astype(dtype),
        "fc.w": rng.standard_normal((4 * 4 * 4, 5)).astype(dtype),
        "fc.b": rng.standard_normal(5).astype(dtype),
    }

    def node(name: str, op: Any, *inputs: str) -> Node:
        return Node(name=name, op=op, inputs=inputs, outputs=(Value(name=f"{name}_out"),), source=name)

    graph = Graph.build(
        name="tiny",
        inputs=(Value(name="x", type=TensorType(shape=("N", 3, 6, 6), dtype=dtype, layout="NCHW")),),
        outputs=("softmax_out",),
        nodes=(
            node("conv", Conv2d(), "x", "conv.w", "conv.b"),
            node("relu", Relu(), "conv_out"),
            node("flat", Flatten(), "relu_out"),
            node("fc", Dense(), "flat_out", "fc.w", "fc.b"),
            node("softmax", Softmax(), "fc_out"),
        ),
        weights=weights,
        metadata={"origin": "test"},
    )
    return run_pipeline(graph, "infer-shapes")


def samples(dtype: str = "float32") -> dict[str, Any]:
    rng = np.random.default_rng(1)
    return {
        "inputs": [rng.standard_normal((2, 3, 6, 6)).astype(dtype)],
        "outputs": [rng.random((2, 5)).astype(dtype)],
        "rtol": 1e-5, "atol": 1e-6,
    }


def save(path: Path, graph: Graph | None = None, **kwargs: Any) -> Path:
    kwargs.setdefault("pipeline", ["infer-shapes"])
    kwargs.setdefault("layers", LAYERS)
    return save_artifact(path, graph if graph is not None else make_graph(), **kwargs)


def tamper(path: Path, edit: Callable[[dict], Any]) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc, indent=1))


def load_error(path: Path) -> str:
    with pytest.raises(ArtifactError) as info:
        load_artifact(path)
    return str(info.value)


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# -- round trips ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_keeps_graph_and_weight_bits(tmp_path: Path, dtype: str) -> None:
    graph = make_graph(dtype)
    path = save(tmp_path / "m.json", graph, source=SOURCE)
    loaded = load_artifact(path)
    assert loaded.graph == graph
    assert loaded.graph.model_dump() == graph.model_dump()
    for name, arr in graph.weights.items():
        got = loaded.graph.weights[name]
        assert got.dtype == np.dtype(dtype) and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes()
    assert loaded.pipeline == ["infer-shapes"]
    assert loaded.layers == LAYERS
    source = {k: v for k, v in loaded.producer["source"].items() if v is not None}  # unset optional fields: null
    assert source == SOURCE and loaded.producer["keydnn"] == "0.1.0"
    assert loaded.interface == {
        "inputs": [{"name": "x", "shape": ["N", 3, 6, 6], "dtype": dtype, "layout": "NCHW"}],
        "outputs": [{"name": "softmax_out", "shape": ["N", 5], "dtype": dtype, "layout": "NC"}],
    }
    assert loaded.verification is None and loaded.version == FORMAT_VERSION and loaded.path == path


def test_sidecar_round_trip_is_aligned(tmp_path: Path) -> None:
    graph = make_graph()
    path = save(tmp_path / "m.json", graph, sidecar=True)
    side = sidecar_path(path)
    assert side == tmp_path / "m.weights.bin" and side.exists()
    doc = json.loads(path.read_text())
    assert doc["sidecar"]["file"] == "m.weights.bin" and doc["sidecar"]["nbytes"] == side.stat().st_size
    assert all(w["encoding"] == "sidecar" and w["offset"] % 64 == 0 for w in doc["weights"])
    loaded = load_artifact(path)
    assert loaded.graph == graph
    for name, arr in graph.weights.items():
        assert loaded.graph.weights[name].tobytes() == arr.tobytes()


@pytest.mark.parametrize("sidecar", [False, True])
def test_verification_vectors_round_trip(tmp_path: Path, sidecar: bool) -> None:
    vectors = samples()
    path = save(tmp_path / "m.json", verification=vectors, sidecar=sidecar)
    checks = load_artifact(path).verification
    assert checks is not None
    assert checks["rtol"] == 1e-5 and checks["atol"] == 1e-6 and checks["source"] == "keras"
    for key in ("inputs", "outputs"):
        assert [a.tobytes() for a in checks[key]] == [a.tobytes() for a in vectors[key]]
        assert [a.shape for a in checks[key]] == [a.shape for a in vectors[key]]


def test_verification_must_match_interface(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="verification input 'x' has shape"):
        save(tmp_path / "m.json", verification={"inputs": [np.zeros((2, 3, 5, 5), np.float32)], "outputs": []})
    with pytest.raises(ArtifactError, match="float16"):
        bad = samples()
        bad["outputs"] = [bad["outputs"][0].astype(np.float16)]
        save(tmp_path / "m.json", verification=bad)
    assert not (tmp_path / "m.json").exists() and not temp_files(tmp_path)


@pytest.mark.parametrize("sidecar", [False, True])
def test_resave_is_byte_identical(tmp_path: Path, sidecar: bool) -> None:
    first = save(tmp_path / "a.json", source=SOURCE, verification=samples(), sidecar=sidecar)
    loaded = load_artifact(first)
    second = save(tmp_path / "a2.json", loaded.graph, pipeline=loaded.pipeline, layers=loaded.layers,
                  source=loaded.producer["source"], verification=loaded.verification, sidecar=sidecar)
    text1, text2 = first.read_bytes(), second.read_bytes()
    if sidecar:  # the sidecar's own name is the only difference
        assert text1.replace(b"a.weights.bin", b"a2.weights.bin") == text2
        assert sidecar_path(first).read_bytes() == sidecar_path(second).read_bytes()
    else:
        assert text1 == text2
    assert save(tmp_path / "a.json", make_graph(), source=SOURCE, verification=samples(),
                sidecar=sidecar).read_bytes() == text1


def test_json_layout(tmp_path: Path) -> None:
    raw = save(tmp_path / "m.json").read_bytes()
    raw.decode("ascii")
    assert raw.endswith(b"}\n") and raw.startswith(b'{\n "format": "keydnn-artifact",\n "version": 1,')
    doc = json.loads(raw)
    assert list(doc) == ["format", "version", "producer", "interface", "pipeline", "layers", "graph",
                         "weights", "sidecar", "verification"]
    for entry in doc["weights"]:
        assert list(entry) == ["name", "dtype", "shape", "sha256", "encoding", "data"]
        assert f'"data": "{entry["data"]}"' in raw.decode()  # one unwrapped line
    assert Graph.model_validate(doc["graph"]).model_dump() == make_graph().model_dump()  # structure only


def test_json_schema_is_published() -> None:
    schema = artifact_json_schema()
    json.dumps(schema)
    assert schema["properties"]["format"]["const"] == "keydnn-artifact"
    assert schema["additionalProperties"] is False
    assert {"graph", "weights", "verification"} <= set(schema["properties"])


def test_header_tells_artifact_from_keras(tmp_path: Path) -> None:
    path = save(tmp_path / "m.json")
    header = read_artifact_header(path)
    assert header["format"] == "keydnn-artifact" and header["version"] == 1
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ArtifactError, match="not a keydnn artifact"):
        read_artifact_header(h5)
    zipped = tmp_path / "model.keras"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ArtifactError, match="not a keydnn artifact"):
        load_artifact(zipped)


# -- load errors --------------------------------------------------------------------------------

def test_unreadable_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "no such file" in load_error(tmp_path / "absent.json")
    assert "not a regular file" in load_error(tmp_path)
    (tmp_path / "empty.json").write_bytes(b"  \n")
    assert "empty" in load_error(tmp_path / "empty.json")
    path = save(tmp_path / "m.json")
    monkeypatch.setattr(artifact_reader, "MAX_FILE_BYTES", 1000)
    assert "larger than the 1000-byte limit" in load_error(path)


def test_truncated_and_malformed_json(tmp_path: Path) -> None:
    path = save(tmp_path / "m.json")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    assert "truncated or malformed JSON at line" in load_error(path)
    path.write_bytes(b'{"format": "keydnn-artifact", "format": "keydnn-artifact"}')
    assert "duplicate key 'format'" in load_error(path)
    path.write_bytes(b'{"format": "keydnn-artifact", "version": NaN}')
    assert "NaN is not valid JSON" in load_error(path)
    path.write_bytes(b"{\xff}")
    assert "not UTF-8" in load_error(path)


def test_json_that_is_not_an_artifact(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text('{"name": "something else"}')
    assert "not a keydnn artifact (no 'format' field)" in load_error(path)
    path.write_text('{"format": "onnx"}')
    assert "format is 'onnx'" in load_error(path)
    path.write_text("[1, 2]")
    assert "not a keydnn artifact" in load_error(path)


@pytest.mark.parametrize("version, message", [
    (999, "artifact format version 999 is newer than this keydnn supports (1); upgrade keydnn"),
    (0, "version 0 is invalid"),
    ("1", "must be an integer, got '1' (str)"),
    (1.0, "must be an integer, got 1.0 (float)"),
    (True, "must be an integer, got True (bool)"),
])
def test_version_checks(tmp_path: Path, version: Any, message: str) -> None:
    path = save(tmp_path / "m.json")
    tamper(path, lambda d: d.update(version=version))
    assert message in load_error(path)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("producer"), "producer: Field required"),
    (lambda d: d.update(extra_field=1), "extra_field: Extra inputs are not permitted"),
    (lambda d: d["weights"][0].update(note="x"), "weights[0].base64.note: Extra inputs are not permitted"),
    (lambda d: d["graph"]["nodes"][0].update(colour="red"), "graph.nodes[0].colour: Extra inputs"),
    (lambda d: d["weights"][0].update(dtype="float16"), "weights[0].base64.dtype: Input should be 'float32'"),
    (lambda d: d["weights"][0].update(dtype="object"), "weights[0].base64.dtype"),
    (lambda d: d["weights"][0].update(shape=[-1, 4]), "weights[0].base64.shape[0]"),
    (lambda d: d["weights"][0].update(shape=[2**20, 2**20]), "more than the limit of 2**31"),
    (lambda d: d["weights"][0].update(encoding="pickle"), "weights[0]: Input tag 'pickle'"),
    (lambda d: d["weights"][0].update(sha256="abc"), "weights[0].base64.sha256"),
    (lambda d: d["graph"]["nodes"][0]["op"].update(kind="exec"), "graph.nodes[0].op"),
    (lambda d: d["verification"].update(rtol="1e-5"), "verification.rtol"),
])
def test_schema_violations_name_the_location(tmp_path: Path, edit: Callable, message: str) -> None:
    path = save(tmp_path / "m.json", verification=samples())
    tamper(path, edit)
    text = load_error(path)
    assert "does not match the artifact schema" in text and message in text


def _flip_middle_char(entry: dict) -> None:
    data = entry["data"]
    i = len(data) // 2
    entry["data"] = data[:i] + ("A" if data[i] != "A" else "B") + data[i + 1:]


def test_flipped_base64_char_names_the_tensor(tmp_path: Path) -> None:
    path = save(tmp_path / "m.json")
    tamper(path, lambda d: _flip_middle_char(next(w for w in d["weights"] if w["name"] == "conv.w")))
    assert "weight 'conv.w' failed its SHA-256 check: the file was modified or corrupted" in load_error(path)


def test_tensor_payload_errors(tmp_path: Path) -> None:
    path = save(tmp_path / "m.json", verification=samples())
    original = path.read_text()

    def check(edit: Callable[[dict], Any], message: str) -> None:
        path.write_text(original)
        tamper(path, edit)
        assert message in load_error(path)

    check(lambda d: d["weights"][1].update(data="!" + d["weights"][1]["data"][1:]),
          "weight 'conv.w' has invalid base64 data")
    check(lambda d: d["weights"][1].update(shape=[4, 3, 3, 4]), "weight 'conv.w': base64 data has")
    check(lambda d: d["weights"][1].update(sha256="0" * 64), "weight 'conv.w' failed its SHA-256 check")
    check(lambda d: d["weights"][1].update(shape=[108]), "weight 'conv.w' is float32[108] but the graph's constant")
    check(lambda d: d["weights"].pop(0), "missing ['conv.b']")
    check(lambda d: d["weights"].append(dict(d["weights"][0], name="ghost")), "unexpected ['ghost']")
    check(lambda d: _flip_middle_char(d["verification"]["outputs"][0]),
          "verification output 'softmax_out' failed its SHA-256 check")

    def reencode(d: dict) -> None:  # consistent entry, but the graph's constant checksum disagrees
        w = d["weights"][0]
        raw = np.zeros(4, "<f4").tobytes()
        w["data"] = base64.b64encode(raw).decode()
        w["sha256"] = hashlib.sha256(raw).hexdigest()
    check(reencode, "the weights do not match the graph")


def test_graph_and_interface_tampering(tmp_path: Path) -> None:
    path = save(tmp_path / "m.json")
    original = path.read_text()
    tamper(path, lambda d: d["graph"]["nodes"][1].update(inputs=["nowhere"]))
    text = load_error(path)
    assert "the graph is invalid" in text and "%nowhere is used before it is defined" in text
    path.write_text(original)
    tamper(path, lambda d: d["interface"]["inputs"][0].update(layout="NHWC"))
    assert "interface does not match" in load_error(path)


def test_sidecar_errors(tmp_path: Path) -> None:
    path = save(tmp_path / "m.json", sidecar=True)
    side = sidecar_path(path)
    blob = side.read_bytes()
    side.write_bytes(blob[:-10])
    assert "is truncated: expected" in load_error(path)
    side.write_bytes(blob + b"\0")
    assert "longer than recorded" in load_error(path)
    doc = json.loads(path.read_text())
    fc_w = next(w for w in doc["weights"] if w["name"] == "fc.w")
    corrupted = bytearray(blob)
    corrupted[fc_w["offset"] + 7] ^= 0xFF
    side.write_bytes(bytes(corrupted))
    assert "weight 'fc.w' failed its SHA-256 check" in load_error(path)
    padding = bytearray(blob)
    padding[20] ^= 0xFF  # conv.b is 16 bytes at offset 0; bytes 16..63 are padding
    side.write_bytes(bytes(padding))
    assert "sidecar m.weights.bin failed its SHA-256 check" in load_error(path)
    side.unlink()
    assert "sidecar" in load_error(path) and "is missing" in load_error(path)
    side.write_bytes(blob)
    original = path.read_text()
    for name in ("../m.weights.bin", "/etc/passwd", ".."):
        path.write_text(original)
        tamper(path, lambda d: d["sidecar"].update(file=name))
        assert "sidecar.file" in load_error(path)


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = [save(tmp_path / "a.json", verification=samples()), save(tmp_path / "b.json", sidecar=True)]

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("loading an artifact must never unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    for path in paths:
        assert load_artifact(path).graph == make_graph()


# -- atomic writes ------------------------------------------------------------------------------

def test_atomic_helpers_write_and_stream(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "héllo\r\n")
    assert target.read_bytes() == "héllo\r\n".encode()
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    with atomic_writer(target, "w") as fh:
        fh.write("a\n")
        assert target.read_bytes() == b"\x00\x01"  # not visible until the block ends
    assert target.read_text() == "a\n"
    mask = os.umask(0o022)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(ValueError):
        with atomic_writer(target, "ab"):
            pass
    assert temp_files(tmp_path) == []


def test_failed_stream_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write(b"partial new content")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and temp_files(tmp_path) == []


def _raise(*args: Any, **kwargs: Any) -> Any:
    raise OSError("simulated failure")


@pytest.mark.parametrize("sidecar", [False, True])
def test_failed_save_keeps_previous_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sidecar: bool) -> None:
    path = save(tmp_path / "m.json", sidecar=sidecar)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = make_graph(seed=7)
    with monkeypatch.context() as m:
        m.setattr(artifact_io.json, "dumps", _raise)
        with pytest.raises(OSError, match="simulated"):
            save(path, other, sidecar=sidecar)
    with monkeypatch.context() as m:  # fails at the publishing rename
        m.setattr(atomic.os, "replace", _raise)
        with pytest.raises(OSError, match="simulated"):
            save(path, other, sidecar=sidecar)
    with monkeypatch.context() as m:  # fails after the data is written, before fsync
        m.setattr(atomic.os, "fsync", _raise)
        with pytest.raises(OSError, match="simulated"):
            save(path, other, sidecar=sidecar)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert load_artifact(path).graph == make_graph()


def test_failed_json_stage_does_not_publish_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path / "m.json", sidecar=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = artifact_io.stage_bytes

    def stage(target: Any, data: bytes) -> Any:
        if str(target).endswith(".json"):
            raise OSError("simulated failure")
        return real(target, data)

    monkeypatch.setattr(artifact_io, "stage_bytes", stage)
    with pytest.raises(OSError):
        save(path, make_graph(seed=3), sidecar=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def _writer(path: str, seed: int, rounds: int) -> None:
    graph = make_graph(seed=seed)
    for _ in range(rounds):
        save(Path(path), graph)


@pytest.mark.skipif(sys.platform == "win32", reason="uses fork")
def test_concurrent_saves_leave_a_complete_file(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    save(path)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(path), seed, 15)) for seed in (1, 2)]
    for p in procs:
        p.start()
    loads = 0
    while any(p.is_alive() for p in procs) or loads == 0:
        load_artifact(path)  # a reader never sees a partial file
        loads += 1
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert loads >= 1
    final = load_artifact(path).graph
    assert final in (make_graph(seed=1), make_graph(seed=2))
    assert temp_files(tmp_path) == []
