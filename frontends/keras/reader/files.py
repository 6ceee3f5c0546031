"""The file entry point: detect the format from the content, read it, and never leak a stray exception."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py

from keydnn.errors import KerasInteropError, Problem

from ..spec import ModelSpec
from .archive import read_keras_zip
from .h5file import read_h5
from .isolation import isolation_from_env, read_keras_file_isolated
from .limits import HDF5_MAGIC, SUPPORTED_FORMATS, ZIP_MAGICS, fail

__all__ = ["read_keras_file"]

logger = logging.getLogger(__name__)


def read_keras_file(
    path: str | os.PathLike[str], *, isolate: bool | None = None, timeout: float | None = None
) -> ModelSpec:
    """Read a ``.keras`` zip or Keras ``.h5`` file into a ``ModelSpec``.

    The format is detected from the first bytes (zip vs HDF5 magic), so a
    misnamed file is still read correctly. Never imports TensorFlow. Every
    failure is a ``KerasInteropError`` naming the file and the problem.

    ``isolate=True`` parses the file in a child process (see
    ``read_keras_file_isolated``): libhdf5 can spin forever or crash on some
    corrupt files, which no in-process check can interrupt. The default comes
    from the environment variable ``KEYDNN_ISOLATE_READER`` ("1" to isolate;
    see ``isolation_from_env``); ``timeout`` (seconds, default
    ``KEYDNN_ISOLATE_TIMEOUT`` or ``ISOLATED_READ_TIMEOUT``) bounds the child.
    """
    if isolate is None:
        isolate = isolation_from_env(default=False)
    if isolate:
        return read_keras_file_isolated(path, timeout=timeout)
    try:
        fs_path = Path(os.fspath(path))
    except TypeError as exc:
        raise KerasInteropError(
            f"expected a file path, got {type(path).__name__}; "
            f"supported formats: {SUPPORTED_FORMATS}",
            [Problem(message="not a path", value=type(path).__name__, supported=SUPPORTED_FORMATS)],
        ) from exc
    where = f"Keras model file '{fs_path}'"
    try:
        return _read_keras_file(fs_path, where)
    except KerasInteropError:
        raise
    except RecursionError as exc:
        raise fail(where, "model file is nested too deeply to read") from exc
    except Exception as exc:  # safety net: malformed input must not leak KeyError/OSError/...
        logger.debug("unexpected error reading %s", fs_path, exc_info=True)
        origin = _error_origin(exc)
        if origin is not None:  # libhdf5 / zipfile reporting corruption: say so
            raise fail(where, f"corrupt {origin} ({type(exc).__name__}: {exc})") from exc
        raise fail(
            where, f"unreadable or malformed model file ({type(exc).__name__}: {exc})"
        ) from exc


def _error_origin(exc: BaseException) -> str | None:
    """What raised ``exc``, when it is a container library rejecting corrupt bytes.

    libhdf5 reports a damaged file from whichever h5py call touches the
    damage, as ``OSError``, ``KeyError``, ``RuntimeError`` or ``ValueError``;
    where the innermost frame is h5py's (or zipfile's, zlib's), the file is
    corrupt and the message says so instead of looking like a keydnn bug.
    """
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    if last is None:
        return None
    parts = Path(last).parts
    if "h5py" in parts:
        return "HDF5 data"
    if Path(last).name in ("zipfile.py", "__init__.py") and "zipfile" in str(last):
        return "zip archive"
    return None


def _read_keras_file(path: Path, where: str) -> ModelSpec:
    if not path.exists():
        raise fail(where, "no such file", supported=SUPPORTED_FORMATS)
    if path.is_dir():
        raise fail(
            where,
            "is a directory (TensorFlow SavedModel directories are not supported)",
            supported=SUPPORTED_FORMATS,
        )
    if not path.is_file():  # a FIFO would block the read forever, /dev/zero would never end
        raise fail(where, "is not a regular file (a device, pipe or socket)", supported=SUPPORTED_FORMATS)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(8)
    except OSError as exc:
        raise fail(where, f"cannot be read ({exc.strerror or exc})") from exc
    if any(magic.startswith(m) for m in ZIP_MAGICS):
        return read_keras_zip(path, where)
    if magic == HDF5_MAGIC or h5py.is_hdf5(path):
        return read_h5(path, where)
    raise fail(
        where,
        "unrecognized file content (neither a zip archive nor HDF5)",
        supported=SUPPORTED_FORMATS,
    )
