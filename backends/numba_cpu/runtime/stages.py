"""Shared stage functions: each stage of generated code compiled as its own C-callable function, once per
distinct *template*, and reused by every stage (of any graph) with the same template.

Why: one numba function holding every stage of a graph compiles in time that
grows faster than the graph (numba's SSA, reaching-definition and liveness
passes revisit every variable of every stage, and LLVM optimizes it all as one
function): MobileNetV2 took ~17 s for its entry alone, NASNetMobile (664
stages) ~35 minutes and 11 GB. A stage's text is mostly the same from layer to
layer; only its numbers differ (shapes, offsets, counter slots, thunk slots,
activation bounds). So every number in the rendered stage becomes a load from a
per-stage parameter vector (``_qi`` int64, ``_qf`` float64, stored in the
graph's ``T`` and ``D`` blobs), and every array address ``p_NAME`` one from an
address vector ``_pa``. What remains, the template, names the code's
structure only; stages with the same template share one compiled function,
cached on disk by the template's hash (so another model with the same kinds
of layers loads it instead of compiling it). The graph's entry then just calls
the stage functions in order through their addresses (like the helper thunks,
``cg_thunks``), which numba types and LLVM compiles in a fraction of a second.

Values are the same numbers as the literals were, of the same numba types
(int64, float64), so the generated code computes exactly what the inline
version did. A stage whose text uses a name outside the stage protocol (an
emitter reading an array directly, say) is not templated: ``template`` returns
None and the stage is rendered inline in the entry as before.

Each function is ``void(tid, nthr, N, AF, SC, pS, pF, pqi, pqf, ppa)`` (all int64):
the thread, thread count, batch, arena offsets of the fixed region and of this
thread's scratch, and the addresses of the state array, the thunk table, the
int and float parameters and the array-address vector.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import re
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["StageTemplate", "template", "is_stage", "stage_address", "stage_pyfunc", "SIGNATURE", "PREFIX",
           "registered", "compiled_count"]

logger = logging.getLogger(__name__)

PREFIX = "stage_"
SIGNATURE = "void(" + ", ".join(["int64"] * 10) + ")"
#: Names a templated stage may read besides its own locals: the stage protocol and the generated module's imports.
_ALLOWED = frozenset({"tid", "nthr", "N", "AF", "SC", "S", "F", "k_F", "k_qi", "k_qf", "k_pa", "ld_i64", "ld_f64",
                      "atomic_add", "atomic_load", "atomic_store", "wait_at_least", "wait_at_most", "fcall", "farray",
                      "np", "min", "max", "range", "abs", "int", "float", "bool", "len"})
_HEADER = """\"\"\"A keydnn stage function (cg_stagefn); generated, do not edit.\"\"\"

import numpy as np

from keydnn.backends.numba_cpu.kernels.sync import wait_at_least, wait_at_most
from keydnn.backends.numba_cpu.kernels.stageops import ld_f64, ld_i64
from keydnn.backends.numba_cpu.kernels.simd import atomic_add, atomic_load, atomic_store, farray, fcall


def {name}(tid, nthr, N, AF, SC, k_S, k_F, k_qi, k_qf, k_pa):
    S = farray(k_S, np.int64)
"""

_F_INDEX = re.compile(r"\bF\[(ld_i64\(k_qi, [^\]]+\))\]")
_lock = threading.Lock()
_SOURCES: dict[str, str] = {}  # name -> module source (registered by ``template`` while generating)
_COMPILED: dict[str, object] = {}  # name -> numba cfunc (this process)


@dataclass
class StageTemplate:
    """One stage as a shared function: its name (``stage_<hash>``) and the values of its parameters."""

    name: str
    ints: list[int]
    floats: list[float]


@functools.lru_cache(maxsize=1)
def _protocol_digest() -> str:
    """The sources whose code ends up inside every stage function (the waiting and atomic helpers)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]  # backends/numba_cpu
    for rel in ("kernels/sync.py", "kernels/simd.py", "runtime/stages.py", "kernels/stageops.py",
                "codegen/stageroll.py"):
        h.update((root / rel).read_bytes())
    return h.hexdigest()


def _free_names(source: str, name: str) -> Optional[set[str]]:
    import symtable

    try:
        table = symtable.symtable(source, "<stage>", "exec")
    except SyntaxError:
        return None
    fn = next((c for c in table.get_children() if c.get_name() == name), None)
    if fn is None:
        return None
    return {s.get_name() for s in fn.get_symbols() if s.is_global() or s.is_free()}


def template(lines: list[str], arrays: dict[str, int]) -> Optional[StageTemplate]:
    """The shared form of one rendered stage (its lines as ``cg_source`` writes them into ``entry``, indented
    by four spaces, without the comment line), or None when it must stay inline. ``arrays``: array name ->
    its slot in the address vector. Registers the template's source for ``stage_address``."""
    from keydnn.backends.numba_cpu.codegen.stageroll import stage_parameters

    parsed = stage_parameters(lines, arrays)
    if parsed is None:
        return None
    body, ints, floats = parsed
    text = "\n".join(body) + "\n"
    text = _F_INDEX.sub(r"ld_i64(k_F, \1)", text)  # F[i] (thunk slots) -> a raw load too
    digest = hashlib.sha256((_protocol_digest() + "\n" + text).encode()).hexdigest()[:24]
    name = PREFIX + digest
    source = _HEADER.format(name=name) + text
    with _lock:
        known = name in _SOURCES
    if not known:
        free = _free_names(source, name)
        if free is None or not free <= (_ALLOWED | {"np"}):
            logger.debug("stage kept inline (reads %s)", sorted((free or set()) - _ALLOWED))
            return None
        with _lock:
            _SOURCES[name] = source
    return StageTemplate(name, ints, floats)


def is_stage(name: str) -> bool:
    return name.startswith(PREFIX)


def registered(name: str) -> str:
    """The module source of a stage function generated in this process."""
    with _lock:
        source = _SOURCES.get(name)
    if source is None:
        raise KeyError(f"stage function {name!r} was not generated in this process")
    return source


def stage_pyfunc(name: str, cached: bool):
    """The Python function of a stage, from a module file in the compile cache (``cached``: numba can keep its
    compiled code beside it) or executed from memory."""
    source = registered(name)
    if cached:
        from keydnn.atomic import atomic_write_text
        from keydnn.backends.numba_cpu.runtime.cache import cache_root

        directory = cache_root() / "numba-cpu" / "stages"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.py"
        try:
            if not path.exists() or path.read_text() != source:
                atomic_write_text(path, source)
            modname = f"keydnn_stage_{name}"
            spec = importlib.util.spec_from_file_location(modname, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            return getattr(module, name)
        except OSError as exc:
            logger.info("stage function %s not cached on disk (%s)", name, exc)
    namespace: dict = {"__name__": f"keydnn_stage_{name}"}
    exec(compile(source, f"<{name}>", "exec"), namespace)  # noqa: S102 - our own generated source
    return namespace[name]


def _cfunc(name: str):
    import numba

    from keydnn.backends.numba_cpu.runtime.cache import cache_enabled

    cached = cache_enabled() and os.environ.get("KEYDNN_STAGE_CACHE", "1") != "0"
    py = stage_pyfunc(name, cached)
    return numba.cfunc(SIGNATURE, cache=cached, nogil=True, error_model="numpy", _nrt=False)(py)


def stage_address(name: str) -> int:
    """Address of a stage function (compiled, or loaded from numba's disk cache, on first use in a process)."""
    with _lock:
        fn = _COMPILED.get(name)
    if fn is None:
        fn = _cfunc(name)
        with _lock:
            fn = _COMPILED.setdefault(name, fn)
    return int(fn.address)


def compiled_count() -> int:
    """Stage functions this process has compiled or loaded (for tests: sharing means fewer than stages)."""
    with _lock:
        return len(_COMPILED)
