"""Saving and loading KeyDNN artifacts.

Writing is atomic (``keydnn.atomic``): with a sidecar, both files are fully
written and fsynced as temp files before either is renamed into place, the
sidecar first. Reading validates in layers — file, JSON, format and version,
schema, tensor bytes and checksums, then the graph with the IR verifier — and
turns every failure into one ``ArtifactError`` that says which layer failed.

The JSON is indented by one space, in the schema's field order, ASCII only,
with each base64 string on a single line: the same graph always gives the
same bytes, a diff of two artifacts is readable line by line, and the
indentation costs little next to the weight data.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import pydantic
from pydantic import ValidationError

from keydnn._version import __version__ as keydnn_version
from keydnn.atomic import stage_bytes
from keydnn.backends.artifact.codec import (
    BackgroundDigest, SidecarBuilder, decode_all, encode_base64, sha256_hex,
)
from keydnn.backends.artifact.format import (
    FORMAT, FORMAT_VERSION, ArtifactFile, Interface, SidecarRef, Verification,
)
from keydnn.backends.artifact.reader import (
    MAX_FILE_BYTES, check_version, describe_validation_error, parse_json_document, read_json_document, read_sidecar,
)
from keydnn.errors import ArtifactError, IRError
from keydnn.ir.graph import Graph
from keydnn.ir.verify import verify

__all__ = [
    "LoadedArtifact", "save_artifact", "load_artifact", "read_artifact_header", "sidecar_path", "interface_of",
    "artifact_bytes", "load_artifact_bytes", "AUTO_SIDECAR_BYTES", "default_sidecar",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class LoadedArtifact:
    """A loaded, fully checked artifact; ``graph`` has its weights attached."""

    graph: Graph
    producer: dict[str, Any]
    interface: dict[str, Any]
    pipeline: list[str]
    layers: list[dict[str, Any]]
    verification: dict[str, Any] | None
    path: Path
    version: int = FORMAT_VERSION


#: Weights of at least this many bytes go into a sidecar when the caller does not say (``Model.save``,
#: ``keydnn convert``): inline base64 is parsed and decoded at every load, holding the text and a copy at once,
#: where a mapped sidecar costs one checksum pass (ResNet50's 100 MB on the project's machine: 0.9 s to parse
#: and decode inline, 0.15 s to check the sidecar).
AUTO_SIDECAR_BYTES = 8 * 2**20


def default_sidecar(graph: Graph) -> bool:
    """Whether ``save`` without an explicit choice writes a sidecar: weights of ``AUTO_SIDECAR_BYTES`` or more."""
    return sum(int(a.nbytes) for a in graph.weights.values()) >= AUTO_SIDECAR_BYTES


def sidecar_path(path: PathLike) -> Path:
    """Where ``save_artifact(..., sidecar=True)`` puts the weights: ``<stem>.weights.bin`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}.weights.bin")


def interface_of(graph: Graph, output_names: Sequence[str] | None = None) -> Interface:
    """The external interface recorded in the file: the graph's input and output types.

    ``output_names`` are the names users see (Keras's output layer names); an output whose graph value
    is named otherwise records that value too.
    """
    def entry(name: str, typ: Any, value: str | None = None) -> dict[str, Any]:
        if typ is None:
            raise ArtifactError(f"graph value %{value or name} has no type; run infer-shapes before saving")
        out = {"name": name, "shape": list(typ.shape), "dtype": typ.dtype, "layout": typ.layout}
        if value is not None and value != name:
            out["value"] = value
        return out

    names = list(output_names) if output_names is not None else list(graph.outputs)
    if len(names) != len(graph.outputs) or len(set(names)) != len(names):
        raise ArtifactError(f"output names {names} do not name the graph's {len(graph.outputs)} outputs one each")
    return Interface(
        inputs=[entry(v.name, v.type) for v in graph.inputs],
        outputs=[entry(n, t, v) for n, v, t in zip(names, graph.outputs, graph.output_types())],
    )


def _producer(source: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "keydnn": keydnn_version, "python": platform.python_version(), "numpy": np.__version__,
        "pydantic": pydantic.VERSION, "source": None if source is None else dict(source),
    }


def _as_arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    return [np.asarray(v) for v in value]


def _check_samples(kind: str, arrays: Sequence[np.ndarray], spec: Sequence[Any], where: str = "") -> None:
    if len(arrays) != len(spec):
        raise ArtifactError(f"{where}verification has {len(arrays)} {kind}s but the graph has {len(spec)}")
    for arr, io_spec in zip(arrays, spec):
        shape_ok = len(arr.shape) == len(io_spec.shape) and all(
            isinstance(d, str) or d == s for d, s in zip(io_spec.shape, arr.shape)
        )
        if not shape_ok:
            raise ArtifactError(
                f"{where}verification {kind} {io_spec.name!r} has shape {list(arr.shape)}, "
                f"the graph expects {io_spec.shape}"
            )


def _encode_verification(verification: Mapping[str, Any], interface: Interface, encode: Any) -> Verification:
    unknown = set(verification) - {"inputs", "outputs", "rtol", "atol", "source"}
    if unknown:
        raise ArtifactError(f"unknown verification keys {sorted(unknown)}")
    inputs, outputs = _as_arrays(verification["inputs"]), _as_arrays(verification["outputs"])
    _check_samples("input", inputs, interface.inputs)
    _check_samples("output", outputs, interface.outputs)
    return Verification(
        inputs=[encode(spec.name, a) for spec, a in zip(interface.inputs, inputs)],
        outputs=[encode(spec.name, a) for spec, a in zip(interface.outputs, outputs)],
        rtol=float(verification.get("rtol", 1e-4)), atol=float(verification.get("atol", 1e-5)),
        source=verification.get("source", "keras"),
    )


#: Optional fields added after version 1 was published: left out when unset, so that a file which does not
#: use them stays readable by every version-1 reader (they refuse unknown fields).
_ADDED_OPTIONAL = {"interface": ("value",), "source": ("sha256", "converted_at"), "layers": ("params",)}


def _without_unset_additions(data: dict[str, Any]) -> dict[str, Any]:
    for side in ("inputs", "outputs"):
        for entry in data["interface"][side]:
            for key in _ADDED_OPTIONAL["interface"]:
                if entry.get(key, 0) is None:
                    del entry[key]
    for record in data.get("layers", []):
        for key in _ADDED_OPTIONAL["layers"]:
            if record.get(key, 0) is None:
                del record[key]
    source = data["producer"].get("source")
    if isinstance(source, dict):
        for key in _ADDED_OPTIONAL["source"]:
            if source.get(key, 0) is None:
                del source[key]
    return data


def _dumps(doc: ArtifactFile, path: Path) -> bytes:
    try:
        text = json.dumps(_without_unset_additions(doc.model_dump(mode="json")), indent=1, ensure_ascii=True, allow_nan=False)
    except ValueError as exc:  # inf / nan in an op attribute: JSON cannot hold it, and null would change meaning
        raise ArtifactError(f"cannot save {path}: the graph holds a number JSON cannot represent ({exc})") from None
    return (text + "\n").encode("ascii")


def save_artifact(
    path: PathLike,
    graph: Graph,
    *,
    pipeline: Sequence[str],
    layers: Sequence[Mapping[str, Any]],
    source: Mapping[str, Any] | None = None,
    verification: Mapping[str, Any] | None = None,
    sidecar: bool = False,
    output_names: Sequence[str] | None = None,
) -> Path:
    """Write ``graph`` and its weights as an artifact; nothing changes on disk unless it all succeeds."""
    path = Path(path)
    side = sidecar_path(path)
    data, blob = artifact_bytes(graph, pipeline=pipeline, layers=layers, source=source, verification=verification,
                                sidecar_name=side.name if sidecar else None, output_names=output_names, where=path)
    with contextlib.ExitStack() as stack:  # stage everything, then publish sidecar first
        staged = [] if blob is None else [stack.enter_context(stage_bytes(side, blob))]
        staged.append(stack.enter_context(stage_bytes(path, data)))
        for item in staged:
            item.commit()
    logger.debug("saved artifact %s (%d bytes, sidecar %s)", path, len(data), None if blob is None else len(blob))
    return path


def artifact_bytes(
    graph: Graph,
    *,
    pipeline: Sequence[str],
    layers: Sequence[Mapping[str, Any]],
    source: Mapping[str, Any] | None = None,
    verification: Mapping[str, Any] | None = None,
    sidecar_name: str | None = None,
    output_names: Sequence[str] | None = None,
    where: Any = "artifact",
) -> tuple[bytes, bytes | None]:
    """The artifact's JSON bytes (and its sidecar's, when ``sidecar_name`` is given), written nowhere:
    what ``save_artifact`` writes and what a pickled ``keydnn.Model`` carries."""
    path = where
    verify(graph, require_types=True)
    builder = SidecarBuilder() if sidecar_name else None
    encode = builder.add if builder is not None else encode_base64
    try:
        interface = interface_of(graph, output_names)
        weights = [encode(c.name, graph.weights[c.name]) for c in graph.constants]
        checks = None if verification is None else _encode_verification(verification, interface, encode)
        blob = builder.getvalue() if builder is not None else None
        doc = ArtifactFile(
            format=FORMAT, version=FORMAT_VERSION, producer=_producer(source), interface=interface,
            pipeline=list(pipeline), layers=[dict(layer) for layer in layers], graph=graph,
            weights=weights, verification=checks,
            sidecar=None if blob is None else SidecarRef(file=sidecar_name, sha256=sha256_hex(blob), nbytes=len(blob)),
        )
    except ValidationError as exc:
        raise ArtifactError(f"cannot save {path}:\n{describe_validation_error(exc)}") from None
    data = _dumps(doc, path)
    if len(data) > MAX_FILE_BYTES:
        raise ArtifactError(f"cannot save {path}: {len(data)} bytes exceeds the {MAX_FILE_BYTES}-byte limit")
    return data, blob


def read_artifact_header(path: PathLike) -> dict[str, Any]:
    """The parsed top level of a keydnn artifact (version not checked); ArtifactError otherwise.

    A Keras ``.h5``/``.keras`` file is rejected from its first bytes, so the CLI
    can use this to decide which loader a path needs.
    """
    return read_json_document(Path(path))


def _check_operand_counts(path: Path, graph: Graph) -> None:
    """Refuse nodes with the wrong number of operands before any shape rule sees them.

    Shape rules index their operands; a tampered node with too few would
    otherwise fail inside the verifier with an ``IndexError`` instead of a
    message that names the node.
    """
    for node in graph.nodes:
        lo, hi = node.op.arity()
        if len(node.inputs) < lo or (hi is not None and len(node.inputs) > hi):
            takes = f"{lo}..{hi}" if hi is not None and hi != lo else (str(lo) if hi == lo else f"at least {lo}")
            raise ArtifactError(
                f"{path}: node {node.name!r} ({node.op.kind}) takes {takes} operands, has {len(node.inputs)}"
            )


def _checked_weights(doc: ArtifactFile) -> set[str]:
    """Weights whose decoded bytes already match the graph constant's checksum: ``decode_all`` checked each
    against its entry's SHA-256, and here that entry's checksum is the constant's. The graph does not hash
    them again (on a big-endian machine the decoded arrays are byte-swapped, so every one is hashed)."""
    if sys.byteorder != "little":
        return set()
    recorded = {c.name: c.sha256 for c in doc.graph.constants}
    return {w.name for w in doc.weights if recorded.get(w.name) == w.sha256}


def _attach_weights(path: Path, doc: ArtifactFile, arrays: dict[str, np.ndarray],
                    verified: set[str] | frozenset[str] = frozenset()) -> Graph:
    _check_operand_counts(path, doc.graph)
    constants = {c.name: c for c in doc.graph.constants}
    missing, extra = sorted(set(constants) - set(arrays)), sorted(set(arrays) - set(constants))
    if missing or extra:
        raise ArtifactError(
            f"{path}: weights do not match the graph's constants: missing {missing}, unexpected {extra}"
        )
    for name, const in constants.items():
        arr = arrays[name]
        if list(arr.shape) != list(const.type.shape) or arr.dtype.name != const.type.dtype:
            raise ArtifactError(
                f"{path}: weight {name!r} is {arr.dtype.name}{list(arr.shape)} "
                f"but the graph's constant is {const.type}"
            )
    try:
        graph = doc.graph.with_weights(arrays, verified=verified)
        verify(graph, require_types=True)
    except IRError as exc:
        raise ArtifactError(f"{path}: the graph is invalid: {exc}") from None
    except ValueError as exc:
        raise ArtifactError(f"{path}: the weights do not match the graph: {exc}") from None
    return graph


def load_artifact(path: PathLike) -> LoadedArtifact:
    """Load and check an artifact; every problem is an ``ArtifactError`` naming the file and what is wrong.

    The file comes from anywhere, so an error from deeper layers (the IR's
    validators and verifier) that is not an ``ArtifactError`` is still
    reported as one -- with its type, so it can be named properly later --
    rather than escaping as a ``TypeError`` from the middle of the loader.
    """
    path = Path(path)
    try:
        return _load_artifact(path)
    except ArtifactError as exc:
        text = str(exc)
        if text.startswith(f"{path}:"):
            raise
        raise ArtifactError(f"{path}: {text}") from None  # codec errors name the tensor, not the file
    except RecursionError:
        raise ArtifactError(f"{path}: the document is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 -- last resort for malformed input; see the docstring
        logger.debug("unexpected error loading %s", path, exc_info=True)
        raise ArtifactError(
            f"{path}: internal error while loading ({type(exc).__name__}: {exc}); the file is malformed"
        ) from exc


def load_artifact_bytes(data: bytes, name: str = "<in-memory artifact>") -> LoadedArtifact:
    """Load an artifact (inline weights) from its JSON bytes, with every check ``load_artifact`` makes:
    how a pickled ``keydnn.Model`` comes back."""
    path = Path(name)
    try:
        return _load_artifact(path, parse_json_document(path, data))
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 -- as load_artifact
        raise ArtifactError(f"{name}: internal error while loading ({type(exc).__name__}: {exc})") from exc


def _load_artifact(path: Path, data: dict[str, Any] | None = None) -> LoadedArtifact:
    if data is None:
        data = read_json_document(path)
    version = check_version(path, data)
    try:
        doc = ArtifactFile.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_error(exc)
        raise ArtifactError(f"{path}: does not match the artifact schema:\n{problems}") from None
    del data
    blob = None if doc.sidecar is None else read_sidecar(path, doc.sidecar)
    whole = None if blob is None else BackgroundDigest(blob)  # the sidecar's own checksum, on another core
    try:
        return _check_and_attach(path, doc, blob, version, whole)
    finally:
        if whole is not None:
            whole.join()  # the thread reads the mapping: never leave it running past the load


def _check_and_attach(path: Path, doc: ArtifactFile, blob: Any, version: int,
                      whole: BackgroundDigest | None) -> LoadedArtifact:
    """Decode and check every tensor, then the graph; the sidecar's digest (``whole``) is compared last."""
    arrays = dict(zip((w.name for w in doc.weights), decode_all(doc.weights, blob, "weight")))
    graph = _attach_weights(path, doc, arrays, _checked_weights(doc))
    if doc.interface != interface_of(graph, [o.name for o in doc.interface.outputs]):
        raise ArtifactError(f"{path}: the recorded interface does not match the graph's inputs and outputs")
    checks = None
    if doc.verification is not None:
        v = doc.verification
        checks = {
            "inputs": decode_all(v.inputs, blob, "verification input"),
            "outputs": decode_all(v.outputs, blob, "verification output"),
            "rtol": v.rtol, "atol": v.atol, "source": v.source,
        }
        _check_samples("input", checks["inputs"], doc.interface.inputs, f"{path}: ")
        _check_samples("output", checks["outputs"], doc.interface.outputs, f"{path}: ")
    if whole is not None and whole.result() != doc.sidecar.sha256:  # type: ignore[union-attr]
        raise ArtifactError(
            f"{path}: sidecar {doc.sidecar.file} failed its SHA-256 check: the file was modified or corrupted"
        )
    logger.debug("loaded artifact %s (format version %d)", path, version)
    return LoadedArtifact(
        graph=graph, producer=doc.producer.model_dump(mode="json"),
        interface=_without_unset_additions({"interface": doc.interface.model_dump(mode="json"),
                                            "producer": {}})["interface"], pipeline=list(doc.pipeline),
        layers=[r.model_dump(mode="json", exclude_none=True) for r in doc.layers],
        verification=checks, path=path, version=version,
    )
