"""Reading a file in a child process (parent side): libhdf5 cannot hang or crash the caller.

The child runs ``child.isolated_main`` (command line: ``CHILD``) and hands
back what ``transfer`` writes.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from keydnn.errors import KerasInteropError, Problem

from ..spec import ModelSpec
from .limits import SUPPORTED_FORMATS, fail
from .transfer import error_from_json, spec_from_dir

__all__ = [
    "CHILD", "ISOLATED_READ_MEMORY", "ISOLATED_READ_TIMEOUT", "ReaderProcessError", "isolation_from_env",
    "read_keras_file_isolated",
]


#: Seconds a child process may take to read one file before it is killed (environment:
#: ``KEYDNN_ISOLATE_TIMEOUT``). Far above what reading a supported model takes (a 4 GiB model
#: reads in well under a minute); a file that makes libhdf5 spin costs this long, then is refused.
ISOLATED_READ_TIMEOUT = 120.0
#: Address space a reading child may grow by, beyond what it has after start-up.
ISOLATED_READ_MEMORY = 8 * 1024**3

#: What the child runs (``python -c CHILD <file> <out dir>``); read at call time, so a test can replace it.
CHILD = (
    "import sys; from keydnn.frontends.keras.reader.child import isolated_main; "
    "sys.exit(isolated_main(sys.argv[1], sys.argv[2]))"
)


class ReaderProcessError(KerasInteropError):
    """The child process reading a file was stopped at its time limit, crashed or ran out of memory.

    Unlike the reader's other refusals this does not prove the file malformed (a very large model on
    a slow disk can run past the limit), so the command line reports it as a failure (exit status 1)
    rather than as unreadable input, and says how to raise the limit.
    """


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def isolation_from_env(default: bool) -> bool:
    """Whether to read Keras files in a child process, from ``KEYDNN_ISOLATE_READER``.

    "1"/"true"/"yes"/"on" isolate, "0"/"false"/"no"/"off" read in process; unset or empty gives
    ``default``: the command line isolates (a hostile file must not hang it), the Python API does
    not (one process, no start-up cost, the caller decides). Any other value is a usage error.
    """
    raw = os.environ.get("KEYDNN_ISOLATE_READER", "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"KEYDNN_ISOLATE_READER={raw!r}: expected 1 (read Keras files in a child process) or 0")


def _timeout_from_env() -> float:
    raw = os.environ.get("KEYDNN_ISOLATE_TIMEOUT", "").strip()
    if not raw:
        return ISOLATED_READ_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"KEYDNN_ISOLATE_TIMEOUT={raw!r}: expected a number of seconds > 0")
    return seconds


#: ``-P`` (Python 3.11+): the child does not put its working directory first on ``sys.path``, so a
#: source checkout's ``keydnn/`` in the working directory never shadows the installed package.
_SAFE_PATH = ("-P",) if sys.version_info >= (3, 11) else ()


def read_keras_file_isolated(
    path: str | os.PathLike[str], *, timeout: float | None = None
) -> ModelSpec:
    """``read_keras_file`` in a child process, so that libhdf5 cannot hang or crash the caller.

    Fuzzing found corrupt ``.h5`` files on which libhdf5 (1.14) loops forever
    inside one C call that holds the GIL: no signal handler, thread or
    Python-level timeout can stop it. The child reads the file with the same
    code, under an address-space limit, and hands back the spec as JSON plus
    one ``.npy`` per weight (read with ``allow_pickle=False``; nothing
    executable crosses the boundary). A child that runs past ``timeout``
    seconds (default: ``KEYDNN_ISOLATE_TIMEOUT``, else ``ISOLATED_READ_TIMEOUT``),
    dies from a signal or runs out of memory becomes a ``ReaderProcessError``
    (a ``KerasInteropError``) naming the file; what the reader refuses in
    the child is raised here exactly as it would be in process. Costs one
    interpreter start-up (about half a second) per file.
    """
    import subprocess
    import tempfile

    if timeout is None:
        timeout = _timeout_from_env()
    try:
        fs_path = Path(os.fspath(path))
    except TypeError as exc:
        raise KerasInteropError(
            f"expected a file path, got {type(path).__name__}; supported formats: {SUPPORTED_FORMATS}",
            [Problem(message="not a path", value=type(path).__name__, supported=SUPPORTED_FORMATS)],
        ) from exc
    where = f"Keras model file '{fs_path}'"
    with tempfile.TemporaryDirectory(prefix="keydnn-read-") as out:
        try:
            proc = subprocess.run(
                [sys.executable, *_SAFE_PATH, "-c", CHILD, str(fs_path), out],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise ReaderProcessError(f"cannot read {where}", [Problem(
                message=f"reading did not finish within {timeout:g} s and was stopped "
                "(corrupt HDF5 structures can make libhdf5 loop forever); refused",
                supported="for a very large model, a longer limit: KEYDNN_ISOLATE_TIMEOUT=<seconds>",
            )]) from None
        result = Path(out)
        if (result / "error.json").is_file():
            raise _from_child(where, lambda: error_from_json((result / "error.json").read_text("utf-8")))
        if proc.returncode != 0 or not (result / "spec.json").is_file():
            how = (
                f"was killed by signal {-proc.returncode}"
                if proc.returncode < 0
                else f"exited with status {proc.returncode}"
            )
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise ReaderProcessError(f"cannot read {where}", [Problem(
                message=f"the process reading the file {how} (a crash in libhdf5, or out of memory?) "
                f"{detail[0][:300]}".rstrip(),
            )])
        spec = _from_child(where, lambda: spec_from_dir(result))
        assert isinstance(spec, ModelSpec)
        return spec


def _from_child(where: str, decode: Any) -> Any:
    """Decode what the child wrote; anything malformed there is this file's failure, not an escape."""
    try:
        return decode()
    except Exception as exc:  # noqa: BLE001 -- the child handled hostile input; trust nothing it wrote
        raise fail(where, f"the process reading the file returned a malformed result ({exc})") from exc
