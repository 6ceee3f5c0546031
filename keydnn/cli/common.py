"""What every command shares: exit codes, clean error messages, reading a model source."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

import click

import keydnn
from keydnn.errors import ArtifactError, KerasInteropError, KeydnnError

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "fail", "Guard", "read_source", "check_distinct", "open_model",
           "load_inputs", "directory_message"]

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"keydnn: error: {message}", err=True)
    sys.exit(code)


class Guard:
    """Turn keydnn errors into clean messages and exit codes."""

    def __init__(self, unreadable_code: int = EXIT_USAGE) -> None:
        self.unreadable_code = unreadable_code

    def __enter__(self) -> "Guard":
        return self

    def __exit__(self, etype, exc, tb) -> bool:
        if exc is None or isinstance(exc, (SystemExit, click.exceptions.Exit, click.ClickException)):
            return False
        if os.environ.get("KEYDNN_DEBUG"):
            return False
        if isinstance(exc, KeyboardInterrupt):
            fail("interrupted", 130)
        if isinstance(exc, ArtifactError):
            fail(str(exc), self.unreadable_code)
        if isinstance(exc, ImportError):
            fail(str(exc), EXIT_FAILED)
        if isinstance(exc, KeydnnError):
            fail(str(exc), EXIT_FAILED)
        if isinstance(exc, (ValueError, TypeError)):
            fail(str(exc), EXIT_USAGE)
        if isinstance(exc, OSError):
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), EXIT_USAGE)
        fail(f"internal error ({type(exc).__name__}: {exc}); rerun with KEYDNN_DEBUG=1 for a traceback "
              "and please report it", EXIT_FAILED)


def check_distinct(src: str, dst: str | None) -> None:
    """Refuse an output path that names the input file (``--dst`` = ``--src``, a link to it, ...).

    The artifact would be written over the user's model -- atomically, so the model would be gone.
    """
    if not dst:
        return
    try:
        same = os.path.exists(dst) and os.path.samefile(src, dst)
    except OSError:  # one of them vanished or cannot be examined: the later steps report that
        return
    if same:
        fail(f"{dst}: --dst names the --src file; refusing to overwrite the model with the artifact "
             "(choose another output path)", EXIT_USAGE)


def _current_dst() -> str | None:
    """The running command's ``--dst`` (None outside a click command, or for one without it)."""
    ctx = click.get_current_context(silent=True)
    dst = (ctx.params.get("dst") or ctx.params.get("dst_arg")) if ctx is not None else None
    return dst if isinstance(dst, str) else None


def read_source(src: str) -> tuple[str, Any]:
    """Tell a KeyDNN artifact from a Keras file; ('artifact', LoadedArtifact) or ('keras', ModelSpec).

    Refuses what is not a regular file before opening it (a named pipe would block the sniffing read
    forever, /dev/zero never end), and a source that the command's ``--dst`` would overwrite. Keras
    files are read in a child process by default (``KEYDNN_ISOLATE_READER=0`` reads in process): a
    corrupt ``.h5`` can make libhdf5 loop forever or crash, and a command must end either way.
    """
    path = Path(src)
    if not path.exists():
        fail(f"{src}: no such file", EXIT_USAGE)
    if path.is_dir():
        fail(directory_message(src), EXIT_USAGE)
    if not path.is_file():
        fail(f"{src}: not a regular file (a device, pipe or socket); expected a .keras, .h5 or KeyDNN .json file",
             EXIT_USAGE)
    check_distinct(src, _current_dst())
    with open(path, "rb") as fh:
        head = fh.read(64).lstrip()
    if head.startswith(b"{"):
        from keydnn.backends.artifact import load_artifact

        return "artifact", load_artifact(path)
    from keydnn.frontends.keras import load_spec
    from keydnn.frontends.keras.reader import ReaderProcessError, isolation_from_env

    try:
        return "keras", load_spec(path, isolate=isolation_from_env(default=True))
    except ReaderProcessError as exc:  # stopped or crashed: not proof the file is malformed
        fail(f"{exc}\n(set KEYDNN_ISOLATE_READER=0 to read in this process, without the limits)", EXIT_FAILED)
    except KerasInteropError as exc:
        fail(str(exc), EXIT_USAGE)




def directory_message(src: str) -> str:
    """What to say about a directory given as a model (the API says the same: ``keydnn.api.check_model_path``)."""
    if (Path(src) / "saved_model.pb").exists():
        return (f"{src}: is a TensorFlow SavedModel directory, which keydnn does not read; save the model as "
                ".keras (model.save('model.keras')) and convert that")
    return f"{src}: is a directory; expected a .keras, .h5 or KeyDNN .json file"


def open_model(src: str, *, device: str = "cpu", threads: int | None = None,
               allow_non_linear_activation: bool = False, command: str = "run") -> "keydnn.Model":
    """A runnable model from an artifact, or from a Keras file converted in memory (saying so, and what
    to run to keep the artifact)."""
    kind, obj = read_source(src)
    if kind == "artifact":
        from keydnn.api import model_from_artifact

        return model_from_artifact(obj, device=device, threads=threads)
    click.echo(f"keydnn: {src} is a Keras file: converting it in memory (to convert once and reuse: "
               f"keydnn convert {src} {Path(src).stem}.json, then keydnn {command} {Path(src).stem}.json)", err=True)
    return keydnn.from_keras(obj, device=device, threads=threads,
                             allow_non_linear_activation=allow_non_linear_activation)


def load_inputs(paths: "Sequence[str]", mmap: bool = False) -> "list | dict":
    """Read a user's inputs safely (never unpickles): .npy files in input order, or one .npz keyed by input name.

    ``mmap=True`` maps ``.npy`` files instead of reading them (``keydnn run`` over inputs larger than memory);
    an ``.npz`` archive cannot be mapped and is read whole.
    """
    import numpy as np

    arrays: list = []
    for path in paths:
        if Path(path).is_dir():
            fail(f"{path}: is a directory; expected a .npy or .npz input file", EXIT_USAGE)
        if not Path(path).is_file():
            fail(f"{path}: no such input file", EXIT_USAGE)
        try:
            loaded = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as exc:
            fail(f"cannot read {path} as .npy/.npz (object arrays are refused): {exc}", EXIT_USAGE)
        if isinstance(loaded, np.ndarray):
            arrays.append(loaded)
            continue
        with loaded:
            named = {k: loaded[k] for k in loaded.files}
        if len(paths) != 1:
            fail(f"{path}: pass either one .npz keyed by input name or .npy files in input order", EXIT_USAGE)
        return named
    return arrays
