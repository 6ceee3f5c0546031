"""Bounded work for hostile sizes: nothing a file declares is allocated or walked before it is checked.

Each test builds one small file that claims something huge -- a 10^12-element
kernel, a never-written 1.5 GiB dataset, a gzip or zip bomb, 10^5 layers,
100,000-deep JSON, a cycle of HDF5 links -- and checks that keydnn refuses it
with a message naming the problem, while tracemalloc sees only a few MiB
allocated (NumPy reports its buffers to tracemalloc). Work is bounded by
counting (memory, Python steps), never by timing: a loaded 2-core machine
must not fail a test.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

import keydnn
from keydnn.backends.artifact import load_artifact
from keydnn.errors import ArtifactError, KerasInteropError
from keydnn.frontends.keras import reader
from keydnn.frontends.keras.reader import read_keras_file

from . import seeds
from .harness import HANG_SECONDS

#: Peak of traced allocations a refused hostile file may cost.
PEAK_BYTES = 64 * 2**20


@contextlib.contextmanager
def bounded(peak: int = PEAK_BYTES) -> Iterator[None]:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _, high = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert high < peak, f"allocated {high} bytes"
    assert time.perf_counter() - t0 < HANG_SECONDS


def python_steps(fn: Callable[[], object]) -> int:
    """How many Python lines run while ``fn()`` runs: a count of work that does not depend on the machine's
    speed or load (C-level work such as JSON parsing is linear in the input anyway)."""
    steps = 0

    def tracer(frame, event, arg):  # noqa: ANN001 - sys.settrace's protocol
        nonlocal steps
        if event == "line":
            steps += 1
        return tracer

    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(None)
    return steps


def refused(path: Path, *fragments: str) -> str:
    with bounded():
        with pytest.raises(KerasInteropError) as info:
            read_keras_file(path)
    text = str(info.value)
    assert str(path) in text
    for fragment in fragments:
        assert fragment in text, text
    with bounded():  # the whole conversion refuses it the same way
        with pytest.raises(KerasInteropError):
            keydnn.from_keras(path)
    return text


def _edit_h5(data: bytes, edit: Any) -> bytes:
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as h5:
        edit(h5)
    return buffer.getvalue()


def _replace_member(data: bytes, name: str, payload: bytes, compression: int = zipfile.ZIP_STORED) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    members[name] = payload
    return seeds.zip_bytes(members, compression)


def _inner_h5(data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.read("model.weights.h5")


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("shape", [(10**6, 10**6), (3, 3, 2, 10**11), (2**28 + 1, 1)])
def test_declared_but_unwritten_dataset(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """A dataset that was never written reads back as fill values: its declared size must not be trusted."""
    def edit(h5: h5py.File) -> None:
        del h5["model_weights/conv2d/conv2d/kernel:0"]
        h5.create_dataset("model_weights/conv2d/conv2d/kernel:0", shape=shape, dtype="float32")

    path = tmp_path / "m.h5"
    path.write_bytes(_edit_h5(seeds.keras2_h5_bytes(), edit))
    refused(path, "kernel:0")


def test_gzip_bomb_dataset(tmp_path: Path) -> None:
    """64 MiB of zeros stored as a few KiB of gzip: refused from its storage size, before decompression."""
    def edit(h5: h5py.File) -> None:
        del h5["layers/dense/vars/0"]
        h5.create_dataset("layers/dense/vars/0", data=np.zeros((16384, 1024), "float32"), compression="gzip",
                          compression_opts=9, chunks=(1024, 1024))

    data = seeds.keras3_zip_bytes()
    path = tmp_path / "m.keras"
    path.write_bytes(_replace_member(data, "model.weights.h5", _edit_h5(_inner_h5(data), edit)))
    refused(path, "stores only", "layers/dense/vars/0")


def test_many_datasets_under_the_per_dataset_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The running total bounds a file listing many datasets that are each acceptable."""
    monkeypatch.setattr(reader.safe_h5, "MAX_TOTAL_WEIGHT_BYTES", 300)  # the seed's weights total 496 bytes
    path = seeds.write_keras_seed(tmp_path / "m.h5", "keras3-h5")
    refused(path, "weights total more than the 300-byte limit")


def test_hard_link_cycle_and_lattice(tmp_path: Path) -> None:
    """Hard links can make a cycle or reach one group along 2^n paths; Keras writes a tree, so refuse both."""
    def cycle(h5: h5py.File) -> None:
        h5["layers/dense/sub"] = h5["layers/dense"]

    def lattice(h5: h5py.File) -> None:
        group = h5.create_group("layers/dense/g0")
        for i in range(1, 26):  # 2^25 paths to the last group if walked naively
            nxt = h5.create_group(f"layers/dense/g{i}")
            group["a"] = nxt
            group["b"] = nxt
            group = nxt

    data = seeds.keras3_zip_bytes()
    for name, edit, fragment in (("cycle", cycle, "linked more than once"), ("lattice", lattice, "linked more")):
        path = tmp_path / f"{name}.keras"
        path.write_bytes(_replace_member(data, "model.weights.h5", _edit_h5(_inner_h5(data), edit)))
        refused(path, fragment)


def test_deep_group_nesting(tmp_path: Path) -> None:
    def deep(h5: h5py.File) -> None:
        h5.create_group("layers/dense/" + "/".join(f"n{i}" for i in range(reader.MAX_GROUP_DEPTH + 5)))

    data = seeds.keras3_zip_bytes()
    path = tmp_path / "deep.keras"
    path.write_bytes(_replace_member(data, "model.weights.h5", _edit_h5(_inner_h5(data), deep)))
    refused(path, "nested deeper")


# ----------------------------------------------------------------------------- zip members


def test_zip_bomb_member(tmp_path: Path) -> None:
    """A deflated member expanding more than MAX_COMPRESSION_RATIO times is refused from its header."""
    data = seeds.keras3_zip_bytes()
    bomb = _inner_h5(data) + b"\0" * (256 * 2**20)  # 256 MiB of zeros deflate to ~256 KiB
    path = tmp_path / "bomb.keras"
    path.write_bytes(_replace_member(data, "model.weights.h5", bomb, zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 2 * 2**20
    refused(path, "decompression bomb", "model.weights.h5")


def test_zip_member_lying_about_its_size(tmp_path: Path) -> None:
    """The read is capped at the limit even when the header understates the size."""
    data = seeds.keras3_zip_bytes()
    payload = b"{" + b" " * (reader.MAX_JSON_BYTES + 10) + b"}"
    path = tmp_path / "liar.keras"
    path.write_bytes(_replace_member(data, "config.json", payload, zipfile.ZIP_DEFLATED))
    raw = bytearray(path.read_bytes())
    # Patch the declared uncompressed size (local header and central directory) down to 100 bytes.
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
        info = zf.getinfo("config.json")
    declared = info.file_size.to_bytes(4, "little")
    for at in [i for i in range(len(raw) - 3) if raw[i:i + 4] == declared]:
        raw[at:at + 4] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    refused(path)


# ----------------------------------------------------------------------------- configs


def _with_config(tmp_path: Path, config_text: str, flavor: str = "keras3-zip") -> Path:
    if flavor == "keras3-zip":
        path = tmp_path / "m.keras"
        path.write_bytes(_replace_member(seeds.keras3_zip_bytes(), "config.json", config_text.encode()))
    else:
        path = tmp_path / "m.h5"
        path.write_bytes(_edit_h5(seeds.keras_seed_bytes(flavor),
                                  lambda h5: h5.attrs.__setitem__("model_config", config_text)))
    return path


@pytest.mark.parametrize("flavor", seeds.KERAS_FLAVORS)
@pytest.mark.parametrize("depth", [reader.MAX_JSON_DEPTH + 1, 5000, 200_000])
def test_deeply_nested_config(tmp_path: Path, flavor: str, depth: int) -> None:
    config = seeds.model_config(flavor)
    config["config"]["layers"][1]["config"]["extra"] = "NEST"
    text = json.dumps(config).replace('"NEST"', "[" * depth + "]" * depth)
    message = refused(_with_config(tmp_path, text, flavor))
    assert "nested deeper" in message or "not valid JSON" in message


def test_config_claiming_a_trillion_element_kernel(tmp_path: Path) -> None:
    """Sizes in the config are only compared with the stored weights, never allocated."""
    config = seeds.model_config("keras3-zip")
    conv = config["config"]["layers"][1]["config"]
    conv["filters"] = 10**6
    conv["kernel_size"] = [10**3, 10**3]
    dense = config["config"]["layers"][-2]["config"]
    dense["units"] = 10**12
    config["config"]["layers"][0]["config"]["batch_shape"] = [None, 2, 10**6, 10**6]
    path = _with_config(tmp_path, json.dumps(config))
    with bounded():
        spec = read_keras_file(path)  # the reader reports sizes; it is the converter's job to refuse them
    assert spec.input_shape == (None, 2, 10**6, 10**6)
    with bounded():
        with pytest.raises(KerasInteropError) as info:
            keydnn.from_keras(path)
    message = str(info.value)
    assert "'conv2d' (Conv2D): kernel weight has shape" in message and "'dense' (Dense)" in message


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "-1", "0", "1.5", "true", '"3"',
                                   "null", "[]", "{}", "18446744073709551617"])
@pytest.mark.parametrize("field", ["filters", "kernel_size", "strides", "units", "pool_size"])
def test_hostile_size_values(tmp_path: Path, field: str, value: str) -> None:
    """NaN, infinite, negative, zero, fractional, boolean, string and 2^64+1 sizes are refused by name."""
    config = seeds.model_config("keras3-zip")
    for entry in config["config"]["layers"]:
        if field in entry["config"]:
            entry["config"][field] = "SENTINEL"
    text = json.dumps(config).replace('"SENTINEL"', value)
    path = _with_config(tmp_path, text)
    with bounded():
        with pytest.raises(KerasInteropError) as info:
            keydnn.from_keras(path)
    holders = [e["config"]["name"] for e in config["config"]["layers"] if field in e["config"]]
    assert any(f"'{name}'" in str(info.value) for name in holders), str(info.value)  # a layer is named


def test_too_many_layers_are_refused_quickly(tmp_path: Path) -> None:
    config = seeds.model_config("keras3-zip")
    relu = config["config"]["layers"][2]
    config["config"]["layers"] = [config["config"]["layers"][0]] + [
        {**relu, "config": {**relu["config"], "name": "same"}} for _ in range(reader.MAX_LAYERS + 1)
    ]
    refused(_with_config(tmp_path, json.dumps(config)), f"more than the limit of {reader.MAX_LAYERS}")


def test_duplicate_names_among_many_layers_are_found_in_linear_time(tmp_path: Path) -> None:
    """Doubling the layers at most doubles the reader's work (counted in Python steps, not timed): a pairwise
    name comparison would quadruple it."""
    config = seeds.model_config("keras3-zip")
    relu = config["config"]["layers"][2]

    def path_with(n: int) -> Path:
        config["config"]["layers"] = [config["config"]["layers"][0]] + [
            {**relu, "config": {**relu["config"], "name": f"r{i % (n // 2)}"}} for i in range(n)
        ]
        folder = tmp_path / str(n)
        folder.mkdir()
        return _with_config(folder, json.dumps(config))

    def refuse(path: Path) -> None:
        with pytest.raises(KerasInteropError, match="duplicate layer names"):
            read_keras_file(path)

    half, full = reader.MAX_LAYERS // 2 - 1, reader.MAX_LAYERS - 2
    small, large = path_with(half), path_with(full)
    refused(large, "duplicate layer names")
    steps_small, steps_large = python_steps(lambda: refuse(small)), python_steps(lambda: refuse(large))
    assert steps_large < 2.5 * steps_small, (steps_small, steps_large)


# ----------------------------------------------------------------------------- artifacts


@pytest.mark.parametrize("shape", [[10**6, 10**6], [2**31, 1], [2**20, 2**20, 2**20]])
def test_artifact_tensor_claiming_huge_shape(tmp_path: Path, shape: list[int]) -> None:
    path = seeds.write_artifact_seed(tmp_path / "a.json")
    doc = json.loads(path.read_text())
    doc["weights"][0]["shape"] = shape
    path.write_text(json.dumps(doc))
    with bounded():
        with pytest.raises(ArtifactError) as info:
            load_artifact(path)
    assert str(path) in str(info.value) and "elements" in str(info.value) or "bytes" in str(info.value)


def test_artifact_deeply_nested_json(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"format": "keydnn-artifact", "version": 1, "x": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with bounded():
        with pytest.raises(ArtifactError, match="nested too deeply"):
            load_artifact(path)
