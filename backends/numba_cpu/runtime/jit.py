"""The numba side of the code generator: compile a generated module, and link its prebuilt library.

Kept apart from ``cg_exec`` so that running a graph from a prebuilt library
(``cg_aot``) never imports numba.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from keydnn.backends.numba_cpu.codegen.target import apply_to_numba

apply_to_numba()  # before numba compiles anything: the generated code is for the target tier

import numba  # noqa: E402
import numpy as np  # noqa: E402

from keydnn.backends.numba_cpu.runtime import aot as cg_aot  # noqa: E402
from keydnn.backends.numba_cpu.runtime.cache import AotHooks, compile_step  # noqa: E402
from keydnn.backends.numba_cpu.kernels.thunks import helper_address  # noqa: E402

__all__ = ["entry_signature", "compile_entry_for", "thunk_addresses", "Aot", "plain_numba_errors"]

logger = logging.getLogger(__name__)


def plain_numba_errors() -> None:
    """Make numba format its internal error messages without terminal colors when no colors were asked for
    (``NUMBA_COLOR_SCHEME`` unset: "no_color").

    numba's type inference builds an error message for every literal-typing attempt that it then
    discards, and with colorama installed each message initializes colorama (wrapping stdout and
    stderr, reading the environment): a quarter of the time it takes to compile a small function such
    as a stage function. The messages a user does see read the same, without escape codes.
    """
    from numba.core import config, errors

    if config.COLOR_SCHEME != "no_color" or not hasattr(errors, "_DummyColorScheme"):
        return
    if type(getattr(errors, "_termcolor_inst", None)).__name__ == "_PlainColorScheme":
        return

    class _PlainColorScheme(errors._DummyColorScheme):  # noqa: SLF001 - no public switch after import
        def code(self, msg):
            return msg

        errmsg = filename = indicate = highlight = reset = code

    errors._termcolor_inst = _PlainColorScheme()  # noqa: SLF001


plain_numba_errors()


def entry_signature(n_in: int, n_out: int, dtype: np.dtype):
    """``entry(tid, nthr, gen, N, x..., y..., W, D, T, A, S, F)``: flat C-contiguous arrays."""
    arr = numba.types.Array(numba.from_dtype(dtype), 1, "C")
    f64 = numba.types.Array(numba.float64, 1, "C")
    i64 = numba.types.Array(numba.int64, 1, "C")
    args = [numba.int64] * 4 + [arr] * (n_in + n_out) + [arr, f64, i64, arr, i64, i64]
    return numba.int64(*args)


def compile_entry_for(n_in: int, n_out: int, dtype: np.dtype):
    sig = entry_signature(n_in, n_out, dtype)

    def compile_entry(module) -> None:
        compile_step("graph entry")
        module.entry.compile(sig)

    return compile_entry


def thunk_addresses(thunks: list[str], dtype: np.dtype) -> list[int]:
    """Addresses of the thunks a program calls (slot 0, the OS's yield, is the caller's)."""
    addresses = []
    for i, h in enumerate(thunks):
        compile_step("helpers", i, len(thunks))  # compiled once per machine, then loaded from numba's cache
        addresses.append(helper_address(h, str(dtype)))
    return addresses


class Aot(AotHooks):
    """Build prebuilt libraries after compiling (``cg_aot.build_library``)."""

    def __init__(self, thunks: list[str], dtype: np.dtype) -> None:
        self.thunks, self.dtype = thunks, str(dtype)

    def build(self, module, directory: Path) -> Optional[dict]:
        return cg_aot.build_library(module, self.thunks, self.dtype, directory)

    def load(self, directory: Path, info: dict):
        return cg_aot.load_library(directory, info)
