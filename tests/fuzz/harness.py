"""The fuzz oracle: what feeding a hostile file to keydnn may and may not do.

Allowed outcomes: the file is accepted, or keydnn raises ``KerasInteropError``
(Keras files) / ``ArtifactError`` (artifacts) with a message that says what is
wrong and, for file-level problems, names the file. Anything else -- another
exception type, a hang, a crash -- is an escape, and the oracle raises
``Escape`` with the traceback so that hypothesis (or the long run) reports the
input that caused it.

An escape is attributed to the code it came from: the innermost keydnn frame
of its traceback. Escapes from the readers this suite guards (the Keras file
reader and the artifact package) always fail; escapes from converters and
passes (``CONVERTER_FILES``) are reported under a signature, so that the
tests can list the known ones explicitly instead of hiding them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from keydnn.errors import ArtifactError, KerasInteropError

__all__ = [
    "Escape", "Hang", "time_limit", "check_read_keras", "check_from_keras", "check_load_artifact",
    "SAFETY_NET", "escape_signature", "KerasCheckWorker", "HANG_SECONDS",
]

#: What a test may assert about elapsed time: that something *ended* (a hang or a runaway loop never does). The
#: bounded work itself takes milliseconds to seconds, so this bound cannot fail on a loaded 2-core machine; work is
#: bounded by counting (memory peaks, Python steps), never by timing.
HANG_SECONDS = 300.0

#: Text of the last-resort wrappers for unexpected errors -- the reader's, the artifact loader's, and the
#: net under the Keras converters (``lower.CONVERTER_FAULT_MESSAGE``) -- counted, not failed, by the fuzzers.
SAFETY_NET = ("unreadable or malformed model file (", "internal error while loading",
              "config value the converter cannot use (")

_ROOT = Path(__file__).resolve().parents[2]
#: Source files whose escapes this suite fails on outright (the readers under test).
READER_FILES = ("frontends/keras/reader/", "frontends/keras/spec.py", "backends/artifact/", "keydnn/atomic.py")


#: [message, signature of the wrapped exception] of the latest refusal that came from a
#: last-resort wrapper (for reports: each such cause deserves a specific message).
last_safety_net: list[str] = []


class Hang(BaseException):
    """One input ran past its time limit (a BaseException so no ``except Exception`` swallows it)."""


@dataclass
class Escape(AssertionError):
    """An input made keydnn do something other than accept or refuse it cleanly."""

    what: str
    signature: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what}: {self.signature}\n{self.detail}"

    @property
    def in_reader(self) -> bool:
        return self.signature.split(":")[0].startswith(READER_FILES)


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``Hang`` in the main thread after ``seconds`` (POSIX; a no-op elsewhere or off the main thread)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s")

    try:
        previous = signal.signal(signal.SIGALRM, on_alarm)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def escape_signature(exc: BaseException) -> str:
    """``<file relative to the repo>:<function>:<ExceptionType>`` of the innermost keydnn frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = "?"
    for frame in frames:
        path = Path(frame.filename).resolve()
        try:
            rel = path.relative_to(_ROOT).as_posix()
        except ValueError:
            continue
        if not rel.startswith("tests/"):
            where = f"{rel}:{frame.name}"
    return f"{where}:{type(exc).__name__}"


def _escape(what: str, exc: BaseException) -> Escape:
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return Escape(what, escape_signature(exc), detail[-6000:])


def _check_message(exc: BaseException, path: Path, must_name_file: bool) -> str:
    text = str(exc)
    if not text.strip():
        raise Escape("empty error message", f"{type(exc).__name__}", repr(exc))
    if must_name_file and str(path) not in text:
        raise Escape("error message does not name the file", type(exc).__name__, text[:2000])
    if any(s in text for s in SAFETY_NET):
        cause = exc.__cause__
        last_safety_net[:] = [text, escape_signature(cause) if cause is not None else "?"]
        return "safety-net"
    return "refused"


def check_read_keras(path: Path, seconds: float = 20.0) -> str:
    """Read ``path`` with the TF-free reader; 'ok', 'refused' or 'safety-net', else ``Escape``."""
    from keydnn.frontends.keras.reader import read_keras_file

    try:
        with time_limit(seconds), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            read_keras_file(path)
    except KerasInteropError as exc:
        return _check_message(exc, path, must_name_file=True)
    except Hang as exc:
        raise _escape("hang", exc) from None
    except Exception as exc:
        raise _escape("read_keras_file raised an unexpected exception type", exc) from None
    return "ok"


def check_from_keras(path: Path, *, strict: bool = True, allow_non_linear_activation: bool = False,
                     seconds: float = 30.0) -> str:
    """Convert ``path`` in full; on success the model must also save and load back."""
    import keydnn

    try:
        with time_limit(seconds), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keydnn.from_keras(path, strict=strict, allow_non_linear_activation=allow_non_linear_activation)
            outcome = "ok"
            if not model.graph.find_opaque():
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "m.json"
                    try:
                        model.save(out)
                    except ArtifactError as exc:
                        _check_message(exc, out, must_name_file=True)
                        outcome = "ok-unsavable"
                    else:
                        keydnn.load(out)
    except KerasInteropError as exc:
        # A file-level problem names the file; a conversion problem names the layers instead.
        return _check_message(exc, path, must_name_file=str(exc).startswith("cannot read"))
    except Hang as exc:
        raise _escape("hang", exc) from None
    except Exception as exc:
        raise _escape("from_keras raised an unexpected exception type", exc) from None
    return outcome


def check_load_artifact(path: Path, *, via_keydnn_load: bool = True, seconds: float = 20.0) -> str:
    """Load ``path`` with ``load_artifact`` (and ``keydnn.load``); 'ok'/'refused'/'safety-net', else ``Escape``."""
    import keydnn
    from keydnn.backends.artifact import load_artifact

    try:
        with time_limit(seconds):
            load_artifact(path)
    except ArtifactError as exc:
        outcome = _check_message(exc, path, must_name_file=True)
    except Hang as exc:
        raise _escape("hang", exc) from None
    except Exception as exc:
        raise _escape("load_artifact raised an unexpected exception type", exc) from None
    else:
        outcome = "ok"
    if not via_keydnn_load:
        return outcome
    try:
        with time_limit(seconds):
            keydnn.load(path)
    except ArtifactError as exc:
        if outcome == "ok":
            raise _escape("keydnn.load refused what load_artifact accepted", exc) from None
        _check_message(exc, path, must_name_file=True)
    except Hang as exc:
        raise _escape("hang", exc) from None
    except Exception as exc:
        raise _escape("keydnn.load raised an unexpected exception type", exc) from None
    else:
        if outcome != "ok":
            raise Escape("keydnn.load accepted what load_artifact refused", str(path), "")
    return outcome


def write_input(directory: Path, name: str, data: bytes) -> Path:
    """Write one fuzz input (replacing the previous one) and return its path."""
    path = directory / name
    path.write_bytes(data)
    return path


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


# --------------------------------------------------------------------------- out-of-process checking

_WORKER_CODE = r"""
import json, sys, warnings
from pathlib import Path
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
from fuzz import harness
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    try:
        path = Path(req["path"])
        read = harness.check_read_keras(path)
        conv = harness.check_from_keras(path, strict=req["strict"], allow_non_linear_activation=req["allow"])
        out = {"outcome": f"read:{read}/convert:{conv}"}
    except harness.Escape as exc:
        out = {"escape": [exc.what, exc.signature, exc.detail]}
    print(json.dumps(out), flush=True)
"""


class KerasCheckWorker:
    """Runs ``check_read_keras`` + ``check_from_keras`` in a long-lived child process.

    libhdf5 can spin forever inside one C call on some corrupt files (found
    by the long fuzz run; whether a given file spins can even depend on heap
    state), and nothing in the process running it can interrupt that. The
    in-CI fuzzers therefore judge inputs in this worker: an input it does not
    answer within ``timeout`` seconds is a ``"spin"``, the worker is replaced,
    and the caller checks that the isolated reader refuses that input in
    bounded time. Escapes come back as ``Escape`` exactly as in process.
    """

    def __init__(self, timeout: float = 15.0) -> None:
        self.timeout = timeout
        self.proc: Any = None
        self.spins = 0

    def _start(self) -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(_ROOT / "tests")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        if self._line(120) != "ready":
            raise RuntimeError("fuzz check worker did not start")

    def _line(self, timeout: float) -> str | None:
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline().decode("utf-8").strip()

    def check(self, path: Path, *, strict: bool = True, allow_non_linear_activation: bool = False) -> str:
        """'read:<outcome>/convert:<outcome>', or 'spin'; raises ``Escape`` like the in-process checks."""
        import json

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        request = {"path": str(path), "strict": strict, "allow": allow_non_linear_activation}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        line = self._line(self.timeout)
        if not line:
            crashed = self.proc.poll() is not None
            self.close()
            if crashed:
                raise Escape("the process checking the input crashed", "native crash", str(path))
            self.spins += 1
            return "spin"
        reply = json.loads(line)
        if "escape" in reply:
            raise Escape(*reply["escape"])
        return reply["outcome"]

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
