"""Fuzz inputs per reader: a seed file plus one kind of mutation, from a ``random.Random``.

``GENERATORS[target][kind](rng, seeds)`` returns one ``FuzzInput``; the CI
tests run each kind under hypothesis, the long run draws kinds at random.
Targets are the three readers of untrusted files: ``h5`` (whole-model
``.h5`` by Keras 3 and by tf_keras), ``keras`` (``.keras`` zip archives) and
``artifact`` (KeyDNN artifacts, inline or with a sidecar).
"""

from __future__ import annotations

import base64
import json
import random
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from . import mutate as m
from . import seeds

__all__ = ["FuzzInput", "Seeds", "GENERATORS", "TARGETS", "ARTIFACT_HOSTILE_VALUES"]


@dataclass
class FuzzInput:
    """Files to write into an empty directory; ``main`` is the one handed to keydnn."""

    main: str
    files: dict[str, bytes]
    strict: bool = True
    allow_non_linear_activation: bool = False
    note: str = ""

    def write(self, directory: Path) -> Path:
        for name, data in self.files.items():
            (directory / name).write_bytes(data)
        return directory / self.main


MODELS: tuple[str, ...] = tuple(sorted(seeds.MODELS))


@dataclass
class Seeds:
    """Every seed file, built once (deterministically) and shared by all inputs; keyed by (flavor, model)."""

    configs: dict[tuple[str, str], dict] = field(default_factory=lambda: {
        (f, mdl): seeds.model_config(f, mdl) for f in seeds.KERAS_FLAVORS for mdl in MODELS})

    @cached_property
    def weights(self) -> dict[str, dict]:
        return {mdl: seeds.seed_weights(model=mdl) for mdl in MODELS}

    @cached_property
    def keras(self) -> dict[tuple[str, str], bytes]:
        return {(f, mdl): seeds.keras_seed_bytes(f, model=mdl) for f in seeds.KERAS_FLAVORS for mdl in MODELS}

    @cached_property
    def artifacts(self) -> dict[str, dict[str, bytes]]:
        """'inline' / 'sidecar' (the cnn) and 'zoo' (inline): file name -> bytes; all carry verification vectors."""
        out = {}
        for kind, model, sidecar in (("inline", "cnn", False), ("sidecar", "cnn", True), ("zoo", "zoo", False)):
            with tempfile.TemporaryDirectory() as tmp:
                seeds.write_artifact_seed(Path(tmp) / "a.json", sidecar=sidecar, model=model)
                out[kind] = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir())}
        return out


def _options(rng: random.Random, inp: FuzzInput) -> FuzzInput:
    inp.strict = rng.random() < 0.7
    inp.allow_non_linear_activation = rng.random() < 0.3
    return inp


# ---------------------------------------------------------------------- Keras files (h5 and zip)


def _flavor(target: str, rng: random.Random) -> tuple[str, str]:
    """(flavor, seed model) for one input of ``target``."""
    flavor = "keras3-zip" if target == "keras" else rng.choice(("keras3-h5", "keras2-h5"))
    return flavor, rng.choice(MODELS)


def _name(flavor: str) -> str:
    return "model.keras" if flavor == "keras3-zip" else "model.h5"


def _keras_bytes(target: str) -> Callable[[random.Random, Seeds], FuzzInput]:
    def gen(rng: random.Random, s: Seeds) -> FuzzInput:
        flavor, model = _flavor(target, rng)
        other = s.keras[rng.choice(sorted(s.keras))]
        data = m.mutate_bytes(s.keras[flavor, model], rng, other)
        return _options(rng, FuzzInput(_name(flavor), {_name(flavor): data}, note=f"bytes/{flavor}/{model}"))
    return gen


def _keras_truncate(target: str) -> Callable[[random.Random, Seeds], FuzzInput]:
    def gen(rng: random.Random, s: Seeds) -> FuzzInput:
        flavor, model = _flavor(target, rng)
        return FuzzInput(_name(flavor), {_name(flavor): m.truncate(s.keras[flavor, model], rng)},
                         note=f"truncate/{flavor}/{model}")
    return gen


def _keras_config(target: str) -> Callable[[random.Random, Seeds], FuzzInput]:
    """A hostile model config in an otherwise valid file (wrong types, sizes, keys, lambdas, nesting)."""
    def gen(rng: random.Random, s: Seeds) -> FuzzInput:
        flavor, model = _flavor(target, rng)
        config = m.mutate_config(s.configs[flavor, model], rng)
        text = m.dumps_hostile(config)
        data = _with_config_text(s.keras[flavor, model], flavor, text)
        return _options(rng, FuzzInput(_name(flavor), {_name(flavor): data}, note=f"config/{flavor}/{model}"))
    return gen


def _with_config_text(seed: bytes, flavor: str, text: str) -> bytes:
    """``seed`` with its model config replaced by ``text`` (config.json or the model_config attribute)."""
    if flavor == "keras3-zip":
        return _replace_zip_member(seed, "config.json", text.encode())
    import io

    import h5py

    buffer = io.BytesIO(seed)
    with h5py.File(buffer, "r+") as h5:
        h5.attrs["model_config"] = text
    return buffer.getvalue()


def _replace_zip_member(data: bytes, name: str, payload: bytes) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [(i.filename, payload if i.filename == name else zf.read(i)) for i in zf.infolist()]
    return seeds.zip_bytes(dict(members))


def _keras_weights(target: str) -> Callable[[random.Random, Seeds], FuzzInput]:
    """Valid config, weights with wrong shapes/dtypes, missing or extra entries, NaN/inf values."""
    def gen(rng: random.Random, s: Seeds) -> FuzzInput:
        flavor, model = _flavor(target, rng)
        weights = m.mutate_weights(s.weights[model], rng)
        try:
            data = seeds.keras_seed_bytes(flavor, weights=weights, model=model)
        except (TypeError, ValueError, OSError):  # a dtype h5py cannot store, a duplicate name
            data = s.keras[flavor, model]
        return _options(rng, FuzzInput(_name(flavor), {_name(flavor): data}, note=f"weights/{flavor}/{model}"))
    return gen


def _keras_h5_structure(target: str) -> Callable[[random.Random, Seeds], FuzzInput]:
    """HDF5-level edits: links, huge or compressed datasets, hostile attributes, cycles."""
    def gen(rng: random.Random, s: Seeds) -> FuzzInput:
        flavor, model = _flavor(target, rng)
        seed = s.keras[flavor, model]
        if flavor == "keras3-zip":
            import io
            import zipfile

            with zipfile.ZipFile(io.BytesIO(seed)) as zf:
                inner = zf.read("model.weights.h5")
            data = _replace_zip_member(seed, "model.weights.h5", m.mutate_h5_structure(inner, rng))
        else:
            data = m.mutate_h5_structure(seed, rng)
        return _options(rng, FuzzInput(_name(flavor), {_name(flavor): data}, note=f"h5-structure/{flavor}/{model}"))
    return gen


def _keras_zip_structure(rng: random.Random, s: Seeds) -> FuzzInput:
    model = rng.choice(MODELS)
    data = m.mutate_zip(s.keras["keras3-zip", model], rng)
    return _options(rng, FuzzInput("model.keras", {"model.keras": data}, note=f"zip-structure/{model}"))


# ---------------------------------------------------------------------- artifacts

#: Artifact-specific hostile values, beside the generic ones.
ARTIFACT_HOSTILE_VALUES: tuple[Any, ...] = (
    "keydnn-artifact", "N", "D1", "NCHW", "NHWC", "NC", "ANY", "float32", "float16", "object", "<f4", "|O",
    "base64", "sidecar", "a.weights.bin", "../a.weights.bin", "/etc/passwd", "0" * 64, "f" * 64,
    [10**9, 10**9], [2**31, 2], [-1], ["N", 3], [0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], "AAAA", "AAA=", "!!!!",
    "conv2d", "dense", "relu", "opaque", "softmax", "flatten", "transpose", 2, 999, 2**62, -5,
)


def _artifact_value(rng: random.Random) -> Any:
    return rng.choice(ARTIFACT_HOSTILE_VALUES) if rng.random() < 0.5 else m.hostile_value(rng)


def _artifact_kind(rng: random.Random) -> str:
    r = rng.random()
    return "sidecar" if r < 0.3 else "zoo" if r < 0.5 else "inline"


def _artifact_bytes(rng: random.Random, s: Seeds) -> FuzzInput:
    files = dict(s.artifacts[_artifact_kind(rng)])
    files["a.json"] = m.mutate_bytes(files["a.json"], rng)
    return FuzzInput("a.json", files, note="bytes")


def _artifact_truncate(rng: random.Random, s: Seeds) -> FuzzInput:
    files = dict(s.artifacts[_artifact_kind(rng)])
    victim = rng.choice(sorted(files))
    files[victim] = m.truncate(files[victim], rng)
    return FuzzInput("a.json", files, note=f"truncate/{victim}")


def _artifact_json(rng: random.Random, s: Seeds) -> FuzzInput:
    """Schema-level edits anywhere in the document: wrong types, sizes, names, versions, ops."""
    files = dict(s.artifacts[_artifact_kind(rng)])
    doc = json.loads(files["a.json"])
    doc = m.mutate_json(doc, rng, values=_artifact_value)
    files["a.json"] = m.dumps_hostile(doc).encode()
    return FuzzInput("a.json", files, note="json")


def _artifact_tensor(rng: random.Random, s: Seeds) -> FuzzInput:
    """One tensor entry edited: data, shape, dtype, checksum, offsets -- consistently or not."""
    kind = _artifact_kind(rng)
    files = dict(s.artifacts[kind])
    doc = json.loads(files["a.json"])
    entries = list(doc["weights"])
    if doc.get("verification"):
        entries += doc["verification"]["inputs"] + doc["verification"]["outputs"]
    entry = rng.choice(entries)
    op = rng.randrange(7)
    if op == 0 and "data" in entry:  # one character changed to another base64 character
        data = entry["data"]
        i = rng.randrange(len(data.rstrip("=")))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        entry["data"] = data[:i] + rng.choice(alphabet.replace(data[i], "")) + data[i + 1:]
    elif op == 1:
        entry["shape"] = rng.choice([[10**6, 10**6], [2**31], [2**40, 2**40], [], [0], list(reversed(entry["shape"]))])
    elif op == 2:
        entry["dtype"] = rng.choice(["float64", "int32", "int64", "float16", "object"])
    elif op == 3:
        entry["sha256"] = "%064x" % rng.getrandbits(256)
    elif op == 4 and "data" in entry:
        raw = base64.b64decode(entry["data"])
        entry["data"] = base64.b64encode(raw[: rng.randrange(len(raw) + 1)] + bytes(rng.randrange(9))).decode()
    elif op == 5 and "offset" in entry:
        entry[rng.choice(["offset", "nbytes"])] = rng.choice([0, 64, 2**40, -64, 63, entry.get("nbytes", 0) * 2])
    elif kind == "sidecar" and "a.weights.bin" in files:
        files["a.weights.bin"] = m.mutate_bytes(files["a.weights.bin"], rng)
    if kind == "sidecar" and rng.random() < 0.2:
        doc["sidecar"]["file"] = rng.choice(["../a.weights.bin", "/etc/passwd", "missing.bin", "..", "a.json"])
    files["a.json"] = json.dumps(doc, indent=1).encode()
    return FuzzInput("a.json", files, note=f"tensor/{kind}")


def _artifact_version(rng: random.Random, s: Seeds) -> FuzzInput:
    files = dict(s.artifacts["inline"])
    doc = json.loads(files["a.json"])
    doc["version"] = rng.choice([0, -1, 2, 3, 999, 2**64, "1", 1.0, True, None, [1], {"v": 1}])
    if rng.random() < 0.3:
        del doc["version"]
    files["a.json"] = json.dumps(doc).encode()
    return FuzzInput("a.json", files, note="version")


TARGETS: tuple[str, ...] = ("h5", "keras", "artifact")

GENERATORS: dict[str, dict[str, Callable[[random.Random, Seeds], FuzzInput]]] = {
    "h5": {
        "bytes": _keras_bytes("h5"),
        "truncate": _keras_truncate("h5"),
        "config": _keras_config("h5"),
        "weights": _keras_weights("h5"),
        "h5-structure": _keras_h5_structure("h5"),
    },
    "keras": {
        "bytes": _keras_bytes("keras"),
        "truncate": _keras_truncate("keras"),
        "config": _keras_config("keras"),
        "weights": _keras_weights("keras"),
        "h5-structure": _keras_h5_structure("keras"),
        "zip-structure": _keras_zip_structure,
    },
    "artifact": {
        "bytes": _artifact_bytes,
        "truncate": _artifact_truncate,
        "json": _artifact_json,
        "tensor": _artifact_tensor,
        "version": _artifact_version,
    },
}


def generate(target: str, rng: random.Random, s: Seeds, kind: str | None = None) -> tuple[str, FuzzInput]:
    """One input for ``target``; ``kind`` picks the mutation (random when None)."""
    kinds = GENERATORS[target]
    kind = kind or rng.choice(sorted(kinds))
    return kind, kinds[kind](rng, s)
