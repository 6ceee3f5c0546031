"""Atomic file writes: a reader sees the old file or the complete new one, never a mix.

Every output keydnn writes (artifacts, sidecars, caches, converted models) goes
through here so that a crash, a full disk or an exception half-way leaves the
previous file untouched and no partial file behind. The recipe is the usual
one: write a uniquely named temp file in the target's directory (same file
system, so the rename is atomic), flush and fsync it, ``os.replace`` it onto
the target, then fsync the directory so the rename itself is durable. Two
processes writing the same target each use their own temp file; the last
rename wins and the target is always complete.

``stage_bytes`` splits the write from the publish so that a caller writing
several files (an artifact JSON and its weights sidecar) can do all the slow,
failure-prone work first and publish with back-to-back renames.

Temp files are named ``.<target name>.<host>-<pid>.<random>.tmp``. An
exception or a signal Python can handle removes them; ``SIGKILL``, a power
cut or an OOM kill cannot, and leaves one behind. Such stale files are never
read by anything (a reader only ever opens the target), and every later
successful write of the same target removes the stale temp files of that
target left by processes of this host that no longer exist (a live writer's
temp file, or another host's on a shared file system, is never touched).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

__all__ = ["StagedFile", "stage_bytes", "atomic_write_bytes", "atomic_write_text", "atomic_writer",
           "sweep_stale_temps"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


def _file_mode() -> int:
    """Permissions a plain ``open(path, 'w')`` would give (mkstemp makes 0600 files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no race-free way to read it elsewhere; restore at once
    os.umask(mask)
    return 0o666 & ~mask


def _host_tag() -> str:
    """This machine's name, reduced to characters safe in a file name (no dots: they delimit fields)."""
    try:
        host = socket.gethostname()
    except OSError:
        host = ""
    return re.sub(r"[^A-Za-z0-9_-]", "_", host)[:32] or "host"


def _name_part(target: Path) -> str:
    """The target's name as it appears in its temp files (cut so the temp name fits in 255 bytes)."""
    return target.name[:150]


def _temp_prefix(target: Path) -> str:
    return f".{_name_part(target)}.{_host_tag()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, someone else's
        return True
    return True


def sweep_stale_temps(target: PathLike) -> list[Path]:
    """Remove temp files of ``target`` left by killed writers of this host; the paths removed.

    Only files named like this module's temp files for exactly this target,
    created on this host by a process id that no longer exists, are removed.
    Never raises: cleanup must not fail a write that already succeeded.
    """
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return []
    target = Path(os.fspath(target))
    directory = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(rf"^\.{re.escape(_name_part(target))}\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^./]+\.tmp$")
    host, me = _host_tag(), os.getpid()
    removed: list[Path] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid == me or _pid_alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
        logger.info("removed stale temp file %s (its writer, pid %d, is gone)", entry.path, pid)
    return removed


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; silently skipped where directories cannot be opened (Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # never mask the original error
        logger.warning("could not remove temp file %s: %s", path, exc)


class StagedFile:
    """A complete, fsynced temp file beside its target, published by ``commit()``."""

    def __init__(self, target: Path, temp: str) -> None:
        self.target = target
        self.temp = temp
        self._done = False

    def commit(self) -> Path:
        """Atomically replace the target with the staged file."""
        if self._done:
            raise RuntimeError(f"staged write of {self.target} was already committed or discarded")
        try:
            os.replace(self.temp, self.target)
        except BaseException:
            self.discard()
            raise
        self._done = True
        _fsync_dir(self.target.parent)
        sweep_stale_temps(self.target)
        return self.target

    def discard(self) -> None:
        """Remove the temp file; the target is left as it was. Safe to call twice."""
        if not self._done:
            self._done = True
            _remove_quietly(self.temp)

    def __enter__(self) -> "StagedFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()  # no-op after commit


@contextlib.contextmanager
def _staged(path: PathLike, mode: str) -> Iterator[tuple[IO, StagedFile]]:
    """Open a temp file beside ``path``; discard it if the body raises."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic writes support mode 'wb' or 'w', not {mode!r}")
    target = Path(os.fspath(path))
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=directory)
    except OSError as exc:  # name the file the caller asked for, not our temp file
        raise OSError(exc.errno, f"cannot write beside it ({exc.strerror})", str(target)) from exc
    staged = StagedFile(target, temp)
    try:
        kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as fh:
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), _file_mode())
            yield fh, staged
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        staged.discard()
        raise


def stage_bytes(path: PathLike, data: bytes) -> StagedFile:
    """Write ``data`` to a durable temp file beside ``path``; publish it with ``.commit()``."""
    with _staged(path, "wb") as (fh, staged):
        fh.write(data)
    return staged


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically; on failure the old file is untouched."""
    stage_bytes(path, data).commit()


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` (encoded, newlines as given) atomically."""
    atomic_write_bytes(path, text.encode(encoding))


@contextlib.contextmanager
def atomic_writer(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Stream into a file that appears at ``path`` only if the ``with`` body succeeds.

    ``mode`` is ``"wb"`` (bytes) or ``"w"`` (UTF-8 text, newlines untranslated).
    """
    with _staged(path, mode) as (fh, staged):
        yield fh
    staged.commit()
