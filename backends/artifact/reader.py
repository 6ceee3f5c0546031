"""Reading an artifact's JSON safely: bounded size, strict JSON, clear errors.

Split from ``io`` so the CLI can tell an artifact from a Keras file (which
starts with HDF5 or ZIP magic) by reading a few bytes, and so every way a file
can be unreadable maps to one ``ArtifactError`` that says which way it is.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import stat
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from keydnn.backends.artifact.format import FORMAT, FORMAT_VERSION, SidecarRef
from keydnn.errors import ArtifactError

__all__ = ["MAX_FILE_BYTES", "read_json_document", "parse_json_document", "check_version", "read_sidecar", "describe_validation_error"]

#: Refuse larger files before reading them (4 GiB of tensors is ~5.4 GiB as base64).
MAX_FILE_BYTES = 8 * 2**30
_SNIFF_BYTES = 64


def _open_checked(path: Path) -> int:
    """Check that ``path`` is a regular file within the size bound; its size."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such file") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ArtifactError(f"{path}: not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise ArtifactError(f"{path}: file is {st.st_size} bytes, larger than the {MAX_FILE_BYTES}-byte limit")
    return st.st_size


def _read(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of ``path``.

    ``limit`` must be the size expected (from ``stat``), not a generous
    bound: ``read(n)`` allocates ``n`` bytes up front, so reading with the
    8 GiB bound would reserve 8 GiB for every small file (and fail where
    memory is not overcommitted).
    """
    try:
        with open(path, "rb") as fh:
            return fh.read(limit)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _sniff(path: Path) -> None:
    """Reject non-JSON files (HDF5, ZIP, ...) from their first bytes, without reading them whole."""
    head = _read(path, _SNIFF_BYTES).lstrip(b" \t\r\n")
    if not head:
        raise ArtifactError(f"{path}: file is empty")
    if not head.startswith(b"{"):
        raise ArtifactError(f"{path}: not a keydnn artifact (not a JSON object)")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ArtifactError(f"duplicate key {key!r} in a JSON object")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ArtifactError(f"{name} is not valid JSON")


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path}: not a keydnn artifact (not UTF-8 text at byte {exc.start})") from None


def _parse(path: Path, text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ArtifactError(
            f"{path}: truncated or malformed JSON at line {exc.lineno} col {exc.colno} ({exc.msg})"
        ) from None
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from None
    except RecursionError:
        raise ArtifactError(f"{path}: JSON is nested too deeply") from None


def _read_text(path: Path, size: int) -> str:
    """The file's text; its bytes are freed on return, so parsing holds the text and the parsed document but
    not the bytes too (a 136 MB inline artifact peaked at three copies of itself)."""
    raw = _read(path, min(size, MAX_FILE_BYTES) + 1)
    if len(raw) > size:  # grew since stat: a writer is still at work, or something is wrong
        raise ArtifactError(f"{path}: file changed size while being read")
    return _decode(path, raw)


def read_json_document(path: Path) -> dict[str, Any]:
    """The parsed top level of ``path`` if it is JSON carrying ``format: keydnn-artifact``."""
    size = _open_checked(path)
    _sniff(path)
    return _document(path, _read_text(path, size))


def parse_json_document(path: Path, raw: bytes) -> dict[str, Any]:
    """``raw`` parsed, if it is JSON carrying ``format: keydnn-artifact`` (``path`` names it in errors)."""
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):  # before decoding, as a file's first bytes are sniffed
        raise ArtifactError(f"{path}: not a keydnn artifact (not a JSON object)")
    return _document(path, _decode(path, raw))


_OBJECT_START = re.compile(r"[ \t\r\n]*\{")


def _document(path: Path, text: str) -> dict[str, Any]:
    if not _OBJECT_START.match(text):  # a match, not ``lstrip``: no copy of a large text
        raise ArtifactError(f"{path}: not a keydnn artifact (not a JSON object)")
    data = _parse(path, text)
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: not a keydnn artifact (top level is not a JSON object)")
    if "format" not in data:
        raise ArtifactError(f"{path}: JSON but not a keydnn artifact (no 'format' field)")
    if data["format"] != FORMAT:
        raise ArtifactError(
            f"{path}: JSON but not a keydnn artifact (format is {data['format']!r}, expected {FORMAT!r})"
        )
    return data


def check_version(path: Path, data: dict[str, Any]) -> int:
    """The file's format version, if this keydnn can read it; checked before the schema."""
    if "version" not in data:
        raise ArtifactError(f"{path}: artifact has no 'version' field")
    version = data["version"]
    if type(version) is not int:
        raise ArtifactError(
            f"{path}: artifact format version must be an integer, got {version!r} ({type(version).__name__})"
        )
    if version < 1:
        raise ArtifactError(f"{path}: artifact format version {version} is invalid (versions start at 1)")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {version} is newer than this keydnn supports "
            f"({FORMAT_VERSION}); upgrade keydnn"
        )
    return version


def read_sidecar(path: Path, ref: SidecarRef) -> "mmap.mmap | bytes":
    """The sidecar's bytes, memory-mapped read-only, if it exists and has exactly the recorded length.

    The weights are views into the mapping (``np.frombuffer``), never copies: loading a model with
    100 MB of weights takes about 100 MB, and only the pages read are in memory.
    """
    side = path.parent / ref.file
    try:
        fh = open(side, "rb")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: its sidecar {side} is missing") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read its sidecar {side}: {exc.strerror or exc}") from None
    with fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path}: its sidecar {side} is not a regular file")
        size = st.st_size
        if size != ref.nbytes:  # checked before reading: the recorded size is the file's word, not ours
            state = "truncated" if size < ref.nbytes else "longer than recorded"
            raise ArtifactError(f"{path}: sidecar {side} is {state}: expected {ref.nbytes} bytes, found {size}")
        if size == 0:
            return b""
        try:
            return mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{path}: cannot map its sidecar {side}: {exc}") from None


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def describe_validation_error(exc: ValidationError, limit: int = 12) -> str:
    """One line per schema violation, with its location in the file; values are not echoed."""
    errors = exc.errors(include_url=False, include_input=False)
    lines = [f"  - {_location(tuple(e['loc']))}: {e['msg']}" for e in errors[:limit]]
    if len(errors) > limit:
        lines.append(f"  - ... and {len(errors) - limit} more")
    return "\n".join(lines)
