"""Shared stage functions, the text side: a rendered stage -> its template (``stage_<hash>``) and parameters.

What a stage function is and why is told in ``runtime.stages`` (which compiles
them); this module only turns a stage's text into its shared form and keeps the
sources generated in this process, so that generating a program (and keying the
compile cache with it) needs neither numba nor the runtime. Split from
``runtime.stages`` so the code generator no longer imports a runtime module.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

__all__ = ["StageTemplate", "template", "is_stage", "registered", "SIGNATURE", "PREFIX"]

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
                "codegen/stageroll.py", "codegen/stagefn.py"):
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
