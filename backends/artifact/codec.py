"""Tensor bytes in and out of the artifact: inline base64 or a 64-byte aligned sidecar.

Bytes on disk are always little-endian C order, so a file means the same on
every machine. Decoding only ever reinterprets bytes with ``np.frombuffer``
under an allow-listed dtype: nothing in the file is unpickled, evaluated or
imported, and every length and checksum is checked before an array is built.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
from math import prod
from typing import Sequence, Union

import numpy as np

from keydnn.backends.artifact.format import ALIGNMENT, TENSOR_DTYPES, Base64Tensor, SidecarTensor
from keydnn.errors import ArtifactError

__all__ = ["to_little_endian", "encode_base64", "SidecarBuilder", "decode_tensor", "decode_all", "sha256_hex",
           "BackgroundDigest"]

Entry = Union[Base64Tensor, SidecarTensor]


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class BackgroundDigest:
    """The SHA-256 of a large buffer, computed on another thread while the caller goes on.

    A sidecar has its own checksum besides each tensor's, and both are checked:
    hashlib releases the GIL while it hashes, so the whole-file digest runs on
    a second core while the loader hashes the tensors and checks the graph, and
    a 100 MB sidecar costs one pass of wall time instead of two. ``result()``
    waits for it; the caller must call it (also when loading fails) before the
    mapping can go away, since the thread reads the mapped bytes.
    """

    #: Smaller buffers are hashed at once: a thread is not worth starting for them.
    THRESHOLD = 1 << 20

    def __init__(self, data: "bytes | memoryview | object") -> None:
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if len(data) < self.THRESHOLD:  # type: ignore[arg-type]
            self._digest = sha256_hex(data)  # type: ignore[arg-type]
        else:
            self._thread = threading.Thread(target=self._run, args=(data,), name="keydnn-sha256", daemon=True)
            self._thread.start()

    def _run(self, data) -> None:
        try:
            self._digest = sha256_hex(data)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by ``result``
            self._error = exc

    def join(self) -> None:
        """Wait for the thread (if any) to finish reading the buffer."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def result(self) -> str:
        self.join()
        if self._error is not None:
            raise self._error
        return self._digest  # type: ignore[return-value]


def to_little_endian(name: str, array: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian copy (or view) of ``array``; rejects dtypes outside the allow-list."""
    array = np.asarray(array)
    dtype_name = array.dtype.name
    if dtype_name not in TENSOR_DTYPES:
        raise ArtifactError(
            f"tensor {name!r} has dtype {array.dtype}; artifacts store only {', '.join(TENSOR_DTYPES)}"
        )
    return np.ascontiguousarray(array, dtype=np.dtype(dtype_name).newbyteorder("<"))


def _header(name: str, array: np.ndarray) -> dict:
    return {
        "name": name,
        "dtype": array.dtype.name,
        "shape": [int(d) for d in array.shape],
        "sha256": sha256_hex(array.tobytes()),
    }


def encode_base64(name: str, array: np.ndarray) -> Base64Tensor:
    """An inline entry: one unwrapped line of standard base64."""
    le = to_little_endian(name, array)
    data = base64.b64encode(le.tobytes()).decode("ascii")
    return Base64Tensor(**_header(name, le), encoding="base64", data=data)


class SidecarBuilder:
    """Accumulates tensors into one buffer, each starting at a multiple of ALIGNMENT."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def add(self, name: str, array: np.ndarray) -> SidecarTensor:
        le = to_little_endian(name, array)
        raw = le.tobytes()
        pad = -self._size % ALIGNMENT
        if pad:
            self._chunks.append(b"\0" * pad)
            self._size += pad
        entry = SidecarTensor(**_header(name, le), encoding="sidecar", offset=self._size, nbytes=len(raw))
        self._chunks.append(raw)
        self._size += len(raw)
        return entry

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)


def _array(entry: Entry, raw: bytes | memoryview, what: str) -> np.ndarray:
    """Check length and checksum of ``raw``, then view it as the entry's array (native byte order)."""
    expected = entry.nbytes_expected
    if len(raw) != expected:
        raise ArtifactError(
            f"{what} {entry.name!r} decodes to {len(raw)} bytes but {entry.dtype}{entry.shape} "
            f"needs {expected}: the file was modified or corrupted"
        )
    if sha256_hex(raw) != entry.sha256:
        raise ArtifactError(
            f"{what} {entry.name!r} failed its SHA-256 check: the file was modified or corrupted"
        )
    dtype = np.dtype(entry.dtype).newbyteorder("<")
    array = np.frombuffer(raw, dtype=dtype, count=prod(entry.shape)).reshape(entry.shape)
    native = dtype.newbyteorder("=")
    return array if array.dtype == native else array.astype(native)


def decode_tensor(entry: Entry, sidecar: bytes | None, what: str = "weight") -> np.ndarray:
    """The array an entry describes, after every length and checksum check."""
    if isinstance(entry, Base64Tensor):
        expected_chars = 4 * ((entry.nbytes_expected + 2) // 3)
        if len(entry.data) != expected_chars:
            raise ArtifactError(
                f"{what} {entry.name!r}: base64 data has {len(entry.data)} characters but "
                f"{entry.dtype}{entry.shape} needs {expected_chars}: the file was modified or corrupted"
            )
        try:
            raw = base64.b64decode(entry.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ArtifactError(f"{what} {entry.name!r} has invalid base64 data ({exc})") from None
        return _array(entry, raw, what)
    if sidecar is None:  # excluded by the schema; kept for direct callers
        raise ArtifactError(f"{what} {entry.name!r} is stored in a sidecar but none was loaded")
    end = entry.offset + entry.nbytes
    if end > len(sidecar):
        raise ArtifactError(
            f"{what} {entry.name!r} lies at bytes {entry.offset}..{end} but the sidecar has only {len(sidecar)}"
        )
    return _array(entry, memoryview(sidecar)[entry.offset:end], what)


def decode_all(entries: Sequence[Entry], sidecar: bytes | None, what: str) -> list[np.ndarray]:
    return [decode_tensor(e, sidecar, what) for e in entries]
