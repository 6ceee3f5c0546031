"""A compiled entry of the code-generating executable, and the hooks that compile or prebuild it lazily.

Apart from ``executable`` so that the executable module holds the executable's logic only; the hooks import
numba and the AOT builder only when something must be compiled, so loading a cached model never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keydnn.backends.numba_cpu.codegen.program import Program

__all__ = ["LazyCompile", "LazyAot", "Variant"]


class LazyCompile:
    """compile_fn for the cache: imports numba (``cg_jit``) only when something must be compiled."""

    def __init__(self, n_in: int, n_out: int, dtype: np.dtype) -> None:
        self.args = (n_in, n_out, dtype)

    def __call__(self, module) -> None:
        from keydnn.backends.numba_cpu.runtime.jit import compile_entry_for

        compile_entry_for(*self.args)(module)


class LazyAot:
    """AOT hooks that import the builder (numba, llvmlite) only to build."""

    def __init__(self, thunks: list[str], dtype: np.dtype) -> None:
        self.thunks, self.dtype = thunks, dtype

    def build(self, module, directory):
        from keydnn.backends.numba_cpu.runtime.jit import Aot

        return Aot(self.thunks, self.dtype).build(module, directory)

    def load(self, directory, info):
        from keydnn.backends.numba_cpu.runtime.aot import load_library

        return load_library(directory, info)


@dataclass
class Variant:
    """One compiled entry.

    ``jit``: a numba dispatcher called as ``fn(tid, nthr, gen, n, *inputs, *outputs, W, D, T, A, S, F)``.
    ``aot``: a prebuilt library's C function ``fn(tid, nthr, gen, n, P)``, where ``P`` is the address of
    an int64 array holding those arrays' addresses (``address`` is the function's own, for the pool).
    """

    program: Program
    key: tuple
    fn: object
    aot: bool
    thunks: np.ndarray  # F: addresses of the helpers the code calls (slot 0: the OS's yield)
    address: int = 0

    def tail(self, arena: np.ndarray, state: np.ndarray) -> tuple:
        p = self.program
        return (p.weights, p.params, p.tables, arena, state, self.thunks)
