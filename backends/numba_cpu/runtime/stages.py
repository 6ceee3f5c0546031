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

The text side (a stage's template, its name and source) is ``codegen.stagefn``,
so that generating code never imports this runtime module; this one compiles
and loads the functions.

Each function is ``void(tid, nthr, N, AF, SC, pS, pF, pqi, pqf, ppa)`` (all int64):
the thread, thread count, batch, arena offsets of the fixed region and of this
thread's scratch, and the addresses of the state array, the thunk table, the
int and float parameters and the array-address vector.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading

from keydnn.backends.numba_cpu.codegen.stagefn import (  # noqa: F401  (the text side, importable from here too)
    PREFIX, SIGNATURE, StageTemplate, is_stage, registered, template,
)

__all__ = ["StageTemplate", "template", "is_stage", "stage_address", "stage_pyfunc", "SIGNATURE", "PREFIX",
           "registered", "compiled_count"]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_COMPILED: dict[str, object] = {}  # name -> numba cfunc (this process)


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
