"""The on-disk compile cache of generated code: a second process loads compiled code instead of compiling.

Location: ``$KEYDNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/keydnn``, else
``~/.cache/keydnn``; ``KEYDNN_CACHE=0`` turns it off (code is then compiled
in a temporary directory and thrown away). Entries live in
``<root>/numba-cpu/<key>/``: ``graph.py`` (the generated source), numba's own
cache files for it (``__pycache__/``, or under ``NUMBA_CACHE_DIR``) and
``manifest.json`` (SHA-256 of the source and of every numba cache file, written
last).

The key is the SHA-256 of the generated source (which holds every shape and
offset, but no weight: weights are passed as arrays, so graphs that differ
only in their weights share an entry), the backend's own source files, the
numba / llvmlite / Python versions and the host CPU (name and features).

Safety: the source is written atomically; before loading, the source and every
numba file are checked against the manifest, and anything that does not match
(a truncated source, a corrupt index or data file, a missing or unreadable
manifest) is deleted and rebuilt, never loaded. A load that still fails is
retried once from scratch. Processes compiling the same entry serialize on an
advisory lock file, so the second one loads what the first compiled; without
locks (non-POSIX) both compile and both succeed, since every file is replaced
atomically.

Compile progress is logged at INFO on ``keydnn.compile`` and reported to the
callbacks registered with ``add_compile_listener``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from keydnn.atomic import atomic_write_text

__all__ = [
    "cache_root", "cache_enabled", "cache_key", "load_program", "Loaded", "AotHooks", "add_compile_listener", "remove_compile_listener",
    "COMPILE_LOGGER", "CompileEvent",
]

logger = logging.getLogger(__name__)
#: Logger the CLI can listen to ("compiling ..." at INFO).
COMPILE_LOGGER = logging.getLogger("keydnn.compile")

_SOURCE = "graph.py"
_MANIFEST = "manifest.json"
_LOCK = ".lock"
_LIBRARY_KEYS = ("library", "library_sha256", "entry", "thunks", "n_args")
_import_lock = threading.Lock()
_listeners: list[Callable[["CompileEvent"], None]] = []


class CompileEvent(dict):
    """``{"event": "start" | "stage" | "step" | "end", "graph": name, "key": ..., "cached": bool, "seconds": float}``;
    a "stage" event (``"stage": "compile"``) says that the code is compiled now, not loaded from the cache;
    "step" events (``compile_step``) name the part of the compile that runs now."""


def add_compile_listener(callback: Callable[[CompileEvent], None]) -> None:
    """Call ``callback(event)`` when a graph starts and ends compiling (or loading from the cache)."""
    _listeners.append(callback)


def remove_compile_listener(callback: Callable[[CompileEvent], None]) -> None:
    with contextlib.suppress(ValueError):
        _listeners.remove(callback)


def compile_step(step: str, done: Optional[int] = None, total: Optional[int] = None) -> None:
    """Tell listeners which part of a compile runs now (``helpers`` 3 of 14, ``graph entry``, ``library``):
    a ``{"event": "step", "step": ..., "done": ..., "total": ...}`` event, for progress displays."""
    _notify(event="step", step=step, done=done, total=total)


def _notify(**info) -> None:
    event = CompileEvent(info)
    for cb in list(_listeners):
        try:
            cb(event)
        except Exception:  # noqa: BLE001 - a listener must not break compilation
            logger.exception("compile listener failed")


def cache_enabled() -> bool:
    return os.environ.get("KEYDNN_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_root() -> Path:
    """Where compiled code is kept (see the module docstring)."""
    explicit = os.environ.get("KEYDNN_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "keydnn"


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "?"


@functools.lru_cache(maxsize=1)
def _environment_digest() -> str:
    """Backend sources, tool versions and the host CPU: what compiled code depends on besides its source.

    Computed without importing numba or LLVM, so that loading a prebuilt library stays light.
    """
    from keydnn.backends.numba_cpu.codegen.cpu import cpu_identity

    h = hashlib.sha256()
    here = Path(__file__).resolve().parents[1]  # backends/numba_cpu, every subpackage
    for path in [*sorted(here.rglob("*.py")), here.parent / "epilogues.py"]:  # + the activation codes kernels use
        h.update(path.relative_to(here.parent).as_posix().encode())
        h.update(path.read_bytes())
    h.update(f"numba={_version('numba')} llvmlite={_version('llvmlite')} py={sys.version_info[:3]}".encode())
    h.update(cpu_identity().encode())
    return h.hexdigest()


def cache_key(source: str) -> str:
    return hashlib.sha256((_environment_digest() + "\n" + source).encode()).hexdigest()


def _sha(path: Path) -> Optional[str]:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An advisory inter-process lock on one cache entry (a no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _numba_files(cache_dirs: set[Path]) -> dict[str, Path]:
    """numba's cache files of our generated module (index and data of every function in it)."""
    found: dict[str, Path] = {}
    stem = Path(_SOURCE).stem + "."
    for d in cache_dirs:
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith(stem) and p.suffix in (".nbi", ".nbc"):
                    found[str(p)] = p
    return found


def _default_numba_dir(directory: Path) -> Path:
    return directory / "__pycache__"


def _wipe_numba(directory: Path, extra: set[Path]) -> None:
    for p in _numba_files({_default_numba_dir(directory), *extra}).values():
        with contextlib.suppress(OSError):
            p.unlink()


def _read_manifest(directory: Path) -> Optional[dict]:
    try:
        data = json.loads((directory / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cached parallel code finds its globals through the module name
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _dispatchers(module) -> list:
    return [module.entry]


def _cache_dirs(module) -> set[Path]:
    dirs = set()
    for disp in _dispatchers(module):
        cache = getattr(disp, "_cache", None)
        path = getattr(cache, "_cache_path", None)
        if path:
            dirs.add(Path(path))
    return dirs


@dataclass
class Loaded:
    """A ready entry: ``kind`` "jit" (``module``: the generated module, numba-compiled) or "aot"
    (``entry``: the prebuilt library's C function, ``thunks``: its helpers' addresses)."""

    kind: str
    module: object = None
    entry: object = None
    thunks: Optional[list[int]] = None


class AotHooks:
    """How the cache builds and loads prebuilt libraries (``cg_aot``); None disables them."""

    def build(self, module, directory: Path) -> Optional[dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def load(self, directory: Path, info: dict):  # pragma: no cover - interface
        raise NotImplementedError


_LOADED: dict[str, Loaded] = {}


def load_program(source: str, graph_name: str, compile_fn: Callable[[object], None],
                 aot: Optional[AotHooks] = None) -> Loaded:
    """The compiled entry of ``source``: from this process, the disk cache, or compiled now.

    ``compile_fn(module)`` compiles the generated module's entry for its one
    signature (numba then finds it in its disk cache when a previous process
    compiled it). With ``aot`` hooks, a prebuilt library is preferred when the
    entry has one, and built after a compile when it has none.
    """
    key = cache_key(source)
    with _import_lock:
        loaded = _LOADED.get(key)
        if loaded is not None:
            return loaded
        start = time.perf_counter()
        _notify(event="start", graph=graph_name, key=key)
        name = f"keydnn_numba_cpu_{key[:24]}"
        if cache_enabled():
            loaded, cached = _load_cached(source, key, name, compile_fn, aot)
        else:
            loaded, cached = Loaded("jit", module=_load_uncached(source, name, compile_fn)), False
        _LOADED[key] = loaded
        seconds = time.perf_counter() - start
        if cached:
            COMPILE_LOGGER.debug("loaded compiled code for graph %r from the cache (%s, %.2f s)", graph_name,
                                 loaded.kind, seconds)
        else:
            COMPILE_LOGGER.info("compiled graph %r for numba-cpu in %.2f s", graph_name, seconds)
        _notify(event="end", graph=graph_name, key=key, cached=cached, seconds=seconds, kind=loaded.kind)
        return loaded


def _load_uncached(source: str, name: str, compile_fn) -> object:
    COMPILE_LOGGER.info("compiling graph (disk cache off, KEYDNN_CACHE=0)...")
    _notify(event="stage", stage="compile", cache=None)
    tmp = Path(tempfile.mkdtemp(prefix="keydnn-cg-"))
    try:
        path = tmp / _SOURCE
        path.write_text(source.replace("cache=True", "cache=False"))
        module = _import(path, name)
        compile_fn(module)
        return module
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_manifest(directory: Path, data: dict) -> None:
    atomic_write_text(directory / _MANIFEST, json.dumps(data, indent=1))


def _load_cached(source: str, key: str, name: str, compile_fn, aot: Optional[AotHooks]) -> tuple[Loaded, bool]:
    directory = cache_root() / "numba-cpu" / key[:40]
    directory.mkdir(parents=True, exist_ok=True)
    src_sha = hashlib.sha256(source.encode()).hexdigest()
    with _locked(directory):
        for attempt in (0, 1):
            manifest = _read_manifest(directory)
            path = directory / _SOURCE
            if _sha(path) != src_sha:
                if path.exists():
                    logger.warning("cache entry %s: source is damaged; rebuilding", directory)
                _reset(directory, manifest)
                atomic_write_text(path, source)
                manifest = None
            trusted = manifest is not None and manifest.get("source_sha256") == src_sha
            if trusted:
                for fname, digest in manifest.get("numba", {}).items():
                    if _sha(Path(fname)) != digest:
                        logger.warning("cache entry %s: numba cache file %s is damaged; rebuilding", directory, fname)
                        trusted = False
                        break
            if trusted and aot is not None and manifest.get("library"):
                prebuilt = aot.load(directory, manifest)
                if prebuilt is not None:
                    return Loaded("aot", entry=prebuilt[0], thunks=prebuilt[1]), True
                manifest = {k: v for k, v in manifest.items() if k not in _LIBRARY_KEYS}  # rebuilt below
            if not trusted:
                _reset(directory, manifest)
                manifest = None
                COMPILE_LOGGER.info("compiling graph for numba-cpu (first time; cached in %s)...", directory)
                _notify(event="stage", stage="compile", cache=str(directory))
            module = None
            try:
                sys.modules.pop(name, None)
                module = _import(path, name)
                if not trusted:
                    _wipe_numba(directory, _cache_dirs(module))  # also where NUMBA_CACHE_DIR puts them
                    if aot is not None:  # build the library first and run from it in this process too
                        built = _build_and_load(directory, key, src_sha, module, aot)
                        if built is not None:
                            return built, False
                compile_fn(module)
            except Exception as exc:  # noqa: BLE001 - a damaged cache must never stop a model from running
                if attempt:
                    raise
                logger.warning("cache entry %s could not be loaded (%s: %s); rebuilding", directory,
                               type(exc).__name__, exc)
                _reset(directory, manifest, _cache_dirs_safe(module))
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not trusted:
                files = _numba_files(_cache_dirs(module))
                manifest = {"key": key, "source_sha256": src_sha, "created": time.time(),
                            "numba": {f: _sha(p) for f, p in sorted(files.items())}}
                _write_manifest(directory, manifest)
            if aot is not None and "library" not in manifest:
                # numba may have just added this signature to its index (an entry first compiled as the
                # library's callee is not reused by the dispatcher): record the files as they are now
                files = _numba_files(_cache_dirs(module))
                manifest = {**manifest, "numba": {f: _sha(p) for f, p in sorted(files.items())}}
                info = aot.build(module, directory)
                manifest = {**manifest, **(info or {"library": None})}
                _write_manifest(directory, manifest)
            return Loaded("jit", module=module), trusted
    raise AssertionError("unreachable")  # pragma: no cover


def _build_and_load(directory: Path, key: str, src_sha: str, module, aot: AotHooks) -> Optional[Loaded]:
    """Compile straight into a prebuilt library and load it (one compile instead of numba's and then the
    library's); None when no library can be built or loaded here (numba's path follows)."""
    info = aot.build(module, directory)
    if not info:
        return None
    files = _numba_files(_cache_dirs(module))
    manifest = {"key": key, "source_sha256": src_sha, "created": time.time(),
                "numba": {f: _sha(p) for f, p in sorted(files.items())}, **info}
    _write_manifest(directory, manifest)
    prebuilt = aot.load(directory, manifest)
    if prebuilt is None:
        return None
    return Loaded("aot", entry=prebuilt[0], thunks=prebuilt[1])


def _reset(directory: Path, manifest: Optional[dict], extra: Optional[set] = None) -> None:
    """Delete everything of an entry but its lock (and its source, which the caller rewrites)."""
    dirs = {Path(p).parent for p in (manifest or {}).get("numba", {})} | (extra or set())
    _wipe_numba(directory, dirs)
    for fname in (_MANIFEST, "graph.so"):
        with contextlib.suppress(OSError):
            (directory / fname).unlink()


def _cache_dirs_safe(module_or_none) -> set[Path]:
    if module_or_none is None:
        return set()
    try:
        return _cache_dirs(module_or_none)
    except Exception:  # noqa: BLE001
        return set()
