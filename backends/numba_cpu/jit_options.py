"""The jit options every numba function of the CPU backend compiles with, and the generator's refusal.

A leaf module (no numba, no other keydnn backend module): the kernel library (``kernels/``), the code
generator (``codegen/``) and the per-op mode (``ops/``) all import it, so none of them imports another's
package for these.
"""

from __future__ import annotations

from keydnn.errors import BackendError

__all__ = ["JIT_OPTIONS", "PARALLEL_JIT_OPTIONS", "HELPER_JIT_OPTIONS", "Unsupported"]

#: Every kernel: cached on disk (a second process does not recompile), releases the GIL
#: (concurrent callers run in parallel) and uses NumPy's float error model (no
#: ZeroDivisionError checks that would block vectorization). Caveat of numba's cache: it
#: is invalidated per source file, so after editing a helper that kernels in *other*
#: files call (activate_range, tap_lo/tap_hi, im2col_channel), delete
#: backends/numba_cpu/__pycache__/*.nbi so those callers recompile.
JIT_OPTIONS: dict = {"cache": True, "nogil": True, "error_model": "numpy"}
PARALLEL_JIT_OPTIONS: dict = {**JIT_OPTIONS, "parallel": True}
#: The helpers generated code calls (cg_kernels, ukernels): they never allocate, so they are compiled
#: without numba's reference counting (``_nrt``), which otherwise wraps every array handed to an inner
#: function in incref/decref calls: a third of a small conv's padding time.
HELPER_JIT_OPTIONS: dict = {**JIT_OPTIONS, "_nrt": False}


class Unsupported(BackendError):
    """A lowering or code generator cannot handle this node; the caller adds the node's name."""
