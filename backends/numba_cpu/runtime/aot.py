"""Prebuilt native libraries of generated code: later processes run a graph without numba or LLVM.

After compiling a graph (a cache miss), the cache entry also gets
``graph.so``: the generated entry as a C-callable function (``entry_c``, which
takes every array as an address) and the thunks it calls, emitted as
position-independent objects by LLVM and linked by the system C compiler
driver (``$CC`` or ``cc``). A process that finds the library (and whose
checksum matches the manifest) loads it with ctypes and never imports numba:
that saves the JIT's import and initialization (about half a second and
~80 MB of a cold start). Without a C compiler, or with ``KEYDNN_AOT=0``,
entries are loaded through numba's cache instead; a library that fails to
build or load is never fatal, the numba path is always there.

numba's compiled code keeps references to a few runtime functions on error
paths that generated code never takes (exception raising, reference counting
of allocations it never makes); the library defines them as stubs that
abort, so it links without numba's runtime. Python's C API resolves against
the running interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

__all__ = ["aot_enabled", "compiler", "build_library", "load_library", "LIBRARY"]

logger = logging.getLogger(__name__)

LIBRARY = "graph.so"
_STUB_PREFIXES = ("NRT_", "numba_")


def aot_enabled() -> bool:
    return os.environ.get("KEYDNN_AOT", "1").strip().lower() not in ("0", "false", "no", "off")


@functools.lru_cache(maxsize=1)
def compiler() -> Optional[str]:
    """The C compiler driver that links libraries (``$CC``, else ``cc``), or None."""
    return shutil.which(os.environ.get("CC", "cc") or "cc")


@functools.lru_cache(maxsize=1)
def _target_machine():
    from llvmlite import binding as llvm

    from keydnn.backends.numba_cpu.codegen.target import current_target

    tier = current_target()  # the CPU model and features numba compiled for (the host's, unless forced)
    cpu = tier.llvm_cpu if tier.llvm_cpu is not None else llvm.get_host_cpu_name()
    features = tier.llvm_features if tier.llvm_features is not None else llvm.get_host_cpu_features().flatten()
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=cpu, features=features, opt=3, reloc="pic", codemodel="default")


def _emit(library) -> tuple[bytes, list[str]]:
    """Position-independent object code of a numba library, and the numba runtime functions it declares."""
    module = library._final_module.clone()  # noqa: SLF001 - numba has no public API for this
    undefined = [fn.name for fn in module.functions if fn.is_declaration and fn.name.startswith(_STUB_PREFIXES)]
    return _target_machine().emit_object(module), undefined


_THUNK_MAGIC = b"KEYDNN-THUNK 1\n"


def _thunk_object(helper: str, dtype: str, store: Path, workdir: Path) -> tuple[Path, str, list[str]]:
    """A thunk's object file (written into ``workdir`` for linking), its symbol and the symbols it needs.

    Thunks are shared by graphs, so their objects are kept per machine next to
    the cache entries, each as one file (symbol, undefined symbols, object
    code) replaced atomically: numba's symbol names differ between processes,
    and two processes building the same thunk at once must never leave one's
    object paired with the other's name. A stored file whose object does not
    define its symbol is rebuilt.
    """
    from keydnn.atomic import atomic_write_bytes
    from keydnn.backends.numba_cpu.kernels.thunks import sources_digest
    from keydnn.backends.numba_cpu.codegen.cpu import cpu_identity

    # the CPU and code-generation tier too: an object built for AVX-512 must never be linked into an AVX2 library
    # "nrt0": thunks are compiled without numba's reference counting, as the JIT's are (objects built before
    # that, with NRT calls around every array handed to an inner function, ran 2.4x slower in the recurrence)
    tag = hashlib.sha256(f"{sources_digest()}|{helper}|{dtype}|{cpu_identity()}|nrt0".encode()).hexdigest()[:24]
    stored = store / f"{helper}_{dtype}_{tag}.thunk"
    parsed = _read_thunk(stored)
    if parsed is None:
        parsed = _compile_thunk(helper, dtype)
        name, undefined, data = parsed
        atomic_write_bytes(stored, _THUNK_MAGIC + f"{name}\n{' '.join(undefined)}\n".encode() + data)
    name, undefined, data = parsed
    obj = workdir / f"{helper}_{dtype}.o"
    obj.write_bytes(data)
    return obj, name, undefined


def _read_thunk(path: Path) -> Optional[tuple[str, list[str], bytes]]:
    """(symbol, undefined symbols, object code) of a stored thunk, or None when absent or damaged."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    if not blob.startswith(_THUNK_MAGIC):
        return None
    parts = blob[len(_THUNK_MAGIC):].split(b"\n", 2)
    if len(parts) != 3:
        return None
    name, undefined, data = parts[0].decode("ascii", "replace"), parts[1].decode("ascii", "replace"), parts[2]
    if not name or name.encode() + b"\0" not in data:  # the object's string table must name the symbol
        logger.warning("stored thunk %s is damaged; rebuilding it", path)
        return None
    return name, [u for u in undefined.split() if u], data


def _compile_thunk(helper: str, dtype: str) -> tuple[str, list[str], bytes]:
    """Compile a thunk afresh (a cfunc numba loaded from its cache has no LLVM IR left to emit)."""
    import numba

    from keydnn.backends.numba_cpu.runtime.stages import SIGNATURE, is_stage, stage_pyfunc

    if is_stage(helper):
        cf = numba.cfunc(SIGNATURE, cache=False, nogil=True, error_model="numpy", _nrt=False)(
            stage_pyfunc(helper, cached=False))
        data, undefined = _emit(cf._library)  # noqa: SLF001
        return cf.native_name, undefined, data

    from keydnn.backends.numba_cpu.kernels.thunks import signature, thunk_name, thunks_module

    py = getattr(thunks_module(), thunk_name(helper, dtype))
    cf = numba.cfunc(signature(helper), cache=False, nogil=True, error_model="numpy", _nrt=False)(py)
    data, undefined = _emit(cf._library)  # noqa: SLF001
    return cf.native_name, undefined, data


def build_library(module, thunks: list[str], dtype: str, directory: Path) -> Optional[dict]:
    """Link ``graph.so`` for a compiled generated module; returns what the manifest records, or None."""
    cc = compiler()
    if not aot_enabled() or cc is None:
        return None
    import numba

    from keydnn.backends.numba_cpu.runtime.cache import compile_step
    from keydnn.backends.numba_cpu.codegen.source import entry_c_signature

    try:
        compile_step("library entry")
        if not _has_ir(module.entry):
            module = _fresh_module(module)
        entry = numba.cfunc(entry_c_signature(module), cache=False, nogil=True, error_model="numpy")(module.entry_c)
        store = directory.parent / "objects"
        store.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            tmpdir = Path(tmp)
            data, undefined = _emit(entry._library)  # noqa: SLF001
            objects = [tmpdir / "entry.o"]
            objects[0].write_bytes(data)
            names = []
            for i, helper in enumerate(thunks):
                compile_step("library helpers", i, len(thunks))
                obj, name, more = _thunk_object(helper, dtype, store, tmpdir)
                objects.append(obj)
                names.append(name)
                undefined += more
            stubs = tmpdir / "stubs.c"
            stubs.write_text("#include <stdlib.h>\n" + "".join(
                f"void {name}(void) {{ abort(); }}\n" for name in sorted(set(undefined))))
            out = tmpdir / LIBRARY
            compile_step("linking the library")
            subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), *map(str, objects), str(stubs), "-lm"],
                           check=True, capture_output=True, timeout=120)
            target = directory / LIBRARY
            os.replace(out, target)
        return {"library": LIBRARY, "library_sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                "entry": entry.native_name, "thunks": names, "n_args": entry_c_signature(module).count("int64") - 1}
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        logger.info("no prebuilt library for %s (%s: %s %s); later processes use numba's cache", directory,
                    type(exc).__name__, exc, detail.decode(errors="replace")[-500:])
        with contextlib.suppress(OSError):
            (directory / LIBRARY).unlink()
        return None


def _has_ir(dispatcher) -> bool:
    """Whether every compiled version of a dispatcher still has its LLVM IR (not loaded from numba's cache)."""
    try:
        return all(any(True for _ in cres.library._final_module.functions)  # noqa: SLF001
                   for cres in dispatcher.overloads.values())
    except Exception:  # noqa: BLE001
        return False


def _fresh_module(module):
    """The generated module executed again without numba's cache, so that its code is compiled anew."""
    import types

    source = Path(module.__file__).read_text().replace("cache=True", "cache=False")
    fresh = types.ModuleType(module.__name__ + "_aot")
    fresh.__file__ = module.__file__
    exec(compile(source, module.__file__, "exec"), fresh.__dict__)  # noqa: S102 - our own generated source
    return fresh


def load_library(directory: Path, info: dict) -> Optional[tuple[object, list[int]]]:
    """(entry function, thunk addresses) from a verified ``graph.so``, or None (numba's path then)."""
    path = directory / info.get("library", LIBRARY)
    try:
        if hashlib.sha256(path.read_bytes()).hexdigest() != info.get("library_sha256"):
            logger.warning("cache entry %s: prebuilt library is damaged; ignoring it", directory)
            return None
        lib = ctypes.CDLL(str(path))
        fn = lib[info["entry"]]
        fn.argtypes = [ctypes.c_int64] * int(info["n_args"])
        fn.restype = ctypes.c_int64
        addresses = [int(ctypes.cast(lib[name], ctypes.c_void_p).value) for name in info["thunks"]]
    except (OSError, KeyError, AttributeError, TypeError, ValueError) as exc:
        logger.info("cache entry %s: prebuilt library not usable (%s); using numba's cache", directory, exc)
        return None
    fn._keydnn_library = lib  # keep the library loaded as long as the function lives
    return fn, addresses
