"""Progress on long work: compiling a model, running a large input, verifying.

A model's first run on a machine compiles its generated code (seconds); a user
calling ``model(x)`` from Python should not face a silent pause. What is shown:

* on a terminal (stderr is a TTY): a tqdm bar per stage that takes more than
  half a second (compiling, batches of ``predict``/``keydnn run``, ``--verify``);
* elsewhere (a log file, CI, a notebook's captured stderr): one line when a
  compile starts and one when it ends; no bars;
* nothing at all when asked: ``KEYDNN_PROGRESS=0``, ``progress=False`` on
  ``from_keras``/``load``/``predict``, or ``keydnn --no-progress ...``.
  ``KEYDNN_PROGRESS=1`` forces bars on where stderr is not a terminal.

The bars are tqdm's (a well-kept, dependency-free library), written to stderr,
so a program's stdout stays clean.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import threading
import time
from typing import Any, Iterator, Optional

__all__ = ["ENV", "bars_enabled", "messages_enabled", "setting", "bar", "Stages", "install_compile_reporter"]

#: Environment variable: ``0`` turns every progress output off, ``1`` forces bars on.
ENV = "KEYDNN_PROGRESS"
#: Seconds a stage runs before its bar appears (short work shows nothing).
DELAY_S = 0.5

_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")
_override: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar("keydnn_progress", default=None)


def _env() -> Optional[bool]:
    value = os.environ.get(ENV, "").strip().lower()
    return False if value in _OFF else True if value in _ON else None


def messages_enabled(explicit: Optional[bool] = None) -> bool:
    """Whether anything may be said about progress (off only when asked)."""
    for choice in (explicit, _override.get(), _env()):
        if choice is not None:
            return choice
    return True


def bars_enabled(explicit: Optional[bool] = None) -> bool:
    """Whether to draw bars: asked for, or stderr is a terminal (and not asked to be quiet)."""
    for choice in (explicit, _override.get(), _env()):
        if choice is not None:
            return choice
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


@contextlib.contextmanager
def setting(value: Optional[bool]) -> Iterator[None]:
    """Within the block (this thread / task), progress is ``value`` (None: the environment decides)."""
    token = _override.set(value) if value is not None else None
    try:
        yield
    finally:
        if token is not None:
            _override.reset(token)


def bar(total: Optional[int] = None, desc: str = "", unit: str = "it", enabled: Optional[bool] = None,
        **kwargs: Any):
    """A tqdm bar on stderr that shows itself after ``DELAY_S`` (disabled unless ``bars_enabled``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not bars_enabled(enabled),
                delay=DELAY_S, leave=False, **kwargs)


class Stages:
    """A bar over named stages (``with Stages([...], desc) as st: st.next("loading Keras")``), for work
    made of a few long steps; it shows itself only on a terminal and only when the work takes a moment."""

    def __init__(self, names: list[str], desc: str, enabled: Optional[bool] = None) -> None:
        self._bar = bar(total=len(names), desc=desc, unit="stage", enabled=enabled,
                        bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar:20}| {postfix} [{elapsed}]")
        self._started = False

    def next(self, name: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(name)

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.close()


class _CompileReporter:
    """Listens to the CPU backend's compile events (``cg_cache.add_compile_listener``).

    It says nothing when the compiled code comes from the cache (a fraction of a second); when it is
    compiled now, a line on a terminal with the part that runs (helpers k/n, the graph entry, the prebuilt
    library) and the elapsed time, else one line at the start and the end.
    """

    def __init__(self) -> None:
        self.graph = "?"
        self.start = 0.0
        self.active = False
        self._bar: Any = None
        self._stop: Optional[threading.Event] = None

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            self.graph, self.start, self.active = str(event.get("graph")), time.perf_counter(), False
        elif kind == "stage" and event.get("stage") == "compile" and messages_enabled():
            self.active = True
            if bars_enabled():
                self._open_bar()
            else:
                print("keydnn: compiling graph for numba-cpu (first time on this machine; later runs load it "
                      "from the cache)...", file=sys.stderr, flush=True)
        elif kind == "step" and self.active:
            step, done, total = event.get("step", ""), event.get("done"), event.get("total")
            text = f"{step} {done + 1}/{total}" if done is not None and total else str(step)
            if self._bar is not None:
                self._bar.set_description_str(f"{self._desc()}: {text}", refresh=True)
        elif kind == "end" and self.active:
            self.active = False
            self._close_bar()
            print(f"keydnn: compiled graph {self.graph!r} in {event.get('seconds', 0.0):.1f} s "
                  "(cached for later runs)", file=sys.stderr, flush=True)

    def _open_bar(self) -> None:
        self._bar = bar(desc=self._desc(), enabled=True, bar_format="{desc} [{elapsed}]")
        self._stop = threading.Event()
        threading.Thread(target=self._tick, args=(self._bar, self._stop), daemon=True,
                         name="keydnn-progress").start()

    def _desc(self) -> str:
        return f"keydnn: compiling graph {self.graph!r} (first time on this machine)"

    @staticmethod
    def _tick(b: Any, stop: threading.Event) -> None:
        while not stop.wait(0.25):
            b.refresh()

    def _close_bar(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._bar is not None:
            self._bar.close()
        self._bar = self._stop = None


_REPORTER: list[_CompileReporter] = []


def install_compile_reporter() -> None:
    """Register the compile reporter with the CPU backend (once per process)."""
    if _REPORTER:
        return
    from keydnn.backends.numba_cpu.runtime.cache import add_compile_listener

    _REPORTER.append(_CompileReporter())
    add_compile_listener(_REPORTER[0])
