"""The ``.keras`` zip archive: config, metadata and the weights file inside, read with bounded memory.

Nothing is extracted to disk; each member is read into memory under a size
and compression-ratio limit, and the inner ``model.weights.h5`` is checked
by ``heap_guard`` before libhdf5 sees it.
"""

from __future__ import annotations

import io
import lzma
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import h5py

from ..spec import ModelSpec
from . import heap_guard  # looked up at call time: tests switch the check off in a child process
from .build import build_spec
from .limits import (
    COMPRESSION_CHECK_BYTES,
    HDF5_MAGIC,
    MAX_COMPRESSION_RATIO,
    MAX_JSON_BYTES,
    MAX_ZIP_MEMBER_BYTES,
    SUPPORTED_FORMATS,
    fail,
)
from .model_config import loads_json, opt_str, parse_model_config
from .weight_stores import ZipWeights

__all__ = ["read_keras_zip"]


_CONFIG_JSON = "config.json"
_METADATA_JSON = "metadata.json"
_WEIGHTS_H5 = "model.weights.h5"
_WEIGHTS_NPZ = "model.weights.npz"



def _read_member(zf: zipfile.ZipFile, name: str, limit: int, where: str) -> bytes:
    """Read one member into memory, refusing more than ``limit`` bytes or a bomb-like ratio.

    The declared sizes are checked first (cheap), and the read itself is
    capped, because the declared uncompressed size is the attacker's word.
    """
    info = zf.getinfo(name)
    if info.file_size > limit:
        raise fail(
            where,
            f"archive member {name!r} is {info.file_size} bytes uncompressed, "
            f"over the {limit}-byte limit",
        )
    if (
        info.file_size > COMPRESSION_CHECK_BYTES
        and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
    ):
        raise fail(
            where,
            f"archive member {name!r} expands {info.compress_size} bytes to {info.file_size}, "
            f"more than {MAX_COMPRESSION_RATIO} times (a decompression bomb?); refused",
        )
    try:
        with zf.open(info) as member:
            data = member.read(limit + 1)
    except (
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        NotImplementedError,  # an unsupported compression method
        RuntimeError,  # encrypted member
        ValueError,
        OSError,  # bz2 errors
    ) as exc:
        raise fail(where, f"archive member {name!r} is corrupt or unreadable ({exc})") from exc
    if len(data) > limit:
        raise fail(where, f"archive member {name!r} expands past the {limit}-byte limit")
    return data


def read_keras_zip(path: Path, where: str) -> ModelSpec:
    """Read a ``.keras`` archive: ``config.json``, ``metadata.json`` and ``model.weights.h5``, each bounded."""
    try:
        zf = zipfile.ZipFile(path)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,  # "zip file version 25.5"
        EOFError,
        ValueError,
        OSError,
    ) as exc:
        raise fail(
            where, f"corrupt or truncated zip archive ({exc})", supported=SUPPORTED_FORMATS
        ) from exc
    with zf:
        names = set(zf.namelist())
        if _CONFIG_JSON not in names:
            raise fail(
                where,
                f"zip archive has no {_CONFIG_JSON}; not a .keras model archive "
                f"(members: {sorted(names)[:10]})",
            )
        root = loads_json(
            _read_member(zf, _CONFIG_JSON, MAX_JSON_BYTES, where), where, _CONFIG_JSON
        )
        keras_version = None
        if _METADATA_JSON in names:
            meta = loads_json(
                _read_member(zf, _METADATA_JSON, MAX_JSON_BYTES, where), where, _METADATA_JSON
            )
            if isinstance(meta, Mapping):
                keras_version = opt_str(meta.get("keras_version"))
        parsed = parse_model_config(root, where)
        if _WEIGHTS_H5 not in names:
            if _WEIGHTS_NPZ in names:
                raise fail(
                    where,
                    f"weights stored as {_WEIGHTS_NPZ}, which is not supported; "
                    "save with the default h5 weights format",
                )
            if any(not e.is_input for e in parsed.entries):
                raise fail(where, f"zip archive has no {_WEIGHTS_H5}")
            return build_spec(parsed, lambda i, e: [], "keras3-zip", keras_version, where)
        data = _read_member(zf, _WEIGHTS_H5, MAX_ZIP_MEMBER_BYTES, where)
    if not data.startswith(HDF5_MAGIC):
        raise fail(where, f"{_WEIGHTS_H5} inside the archive is not an HDF5 file")
    heap_guard.check_global_heaps(data, where, _WEIGHTS_H5)
    try:
        h5 = h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as exc:
        raise fail(where, f"{_WEIGHTS_H5} inside the archive is unreadable ({exc})") from exc
    with h5:
        keras2 = bool(keras_version and keras_version.startswith("2."))
        store = ZipWeights(h5, parsed, keras2, where)
        return build_spec(parsed, store.read, "keras3-zip", keras_version, where)
