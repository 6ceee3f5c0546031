"""Code-generation targets: the instruction-set tier generated CPU code is specialized for.

A target describes what the code generator needs to know of a CPU: vector
width, how many vector registers a micro-kernel tile may keep busy, the LLVM
CPU model and features the code is compiled for, and the cache sizes blocking
decisions use. Three tiers exist:

========  =========  ======  ===================  ==============================
tier      vectors    regs    LLVM CPU             for
========  =========  ======  ===================  ==============================
avx512    512-bit    32      x86-64-v4            AVX-512 (F, BW, DQ, VL) + FMA
avx2      256-bit    16      x86-64-v3            AVX2 + FMA (Haswell, Zen 1-3)
generic   128-bit    16      the host's, no hint  everything else (aarch64, SSE)
========  =========  ======  ===================  ==============================

The native tier is the widest the CPU has; ``KEYDNN_CPU_TARGET`` forces a
narrower one (``avx2``, ``generic``; ``native`` is the default), so every tier
can be compiled, tested and benchmarked on any machine that has at least its
instruction set. A forced tier sets numba's target CPU and features for the
whole process (``numba.core.config.CPU_NAME`` / ``CPU_FEATURES``) before numba
compiles anything, and is part of the compile-cache key.

Pure Python over NumPy's feature detection: keying the cache never imports
numba or LLVM.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from dataclasses import dataclass

import numpy as np

from keydnn.errors import BackendError

__all__ = ["Target", "TIERS", "current_target", "native_tier", "runnable_tiers", "apply_to_numba", "ENV"]

logger = logging.getLogger(__name__)

#: The environment variable that forces a tier.
ENV = "KEYDNN_CPU_TARGET"


@dataclass(frozen=True)
class Target:
    """One code-generation tier.

    ``registers`` is the number of architectural vector registers: a GEMM tile
    of ``rows x vectors`` accumulators plus the operands it loads must fit, or
    LLVM spills accumulators to the stack inside the innermost loop.
    """

    name: str
    vector_bits: int
    registers: int
    llvm_cpu: str | None  # None: numba's default (the host CPU)
    llvm_features: str | None  # None: numba's default (the host's features)
    requires: frozenset[str]  # NumPy's names of the CPU features the tier's code uses
    l1_bytes: int = 32 * 1024
    l2_bytes: int = 1024 * 1024

    def lanes(self, dtype: str | np.dtype = "float32") -> int:
        """Elements of ``dtype`` in one vector register (at least 4: LLVM splits wider vectors where needed)."""
        return max(4, self.vector_bits // (8 * np.dtype(dtype).itemsize))

    @property
    def gemm_rows(self) -> int:
        """Rows (output channels or samples) of a two-vector GEMM tile: 2 * rows accumulators, two loaded
        vectors and a broadcast fit the register file (8 x 2 + 3 = 19 of 32; 6 x 2 + 3 = 15 of 16)."""
        return 8 if self.registers >= 32 else 6

    def channel_rows(self, nv: int) -> int:
        """Output pixels of a channel-vector conv tile with ``nv`` vectors of output channels: ``rows * nv``
        accumulators plus the loaded vector and pixel broadcasts fit the registers (with 32 registers the
        measured 6x4 / 8x3 / 8x2 / 8x1 tiles; with 16, 3x4 / 4x3 / 6x2 / 8x1, at most 12 accumulators)."""
        if self.registers >= 32:
            return {4: 6, 3: 8, 2: 8, 1: 8}[nv]
        return {4: 3, 3: 4, 2: 6, 1: 8}[nv]

    def identity(self) -> str:
        """What compiled code depends on: the tier and, for the native tier, nothing more than the host CPU."""
        features = "host" if self.llvm_features is None else self.llvm_features
        return f"{self.name}|{self.llvm_cpu or 'host'}|{features}"


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")

TIERS: dict[str, Target] = {
    "avx512": Target("avx512", 512, 32, "x86-64-v4", "", frozenset({"AVX512F", "AVX512BW", "AVX512DQ", "AVX512VL",
                                                                      "FMA3", "AVX2"})),
    "avx2": Target("avx2", 256, 16, "x86-64-v3", "", frozenset({"AVX2", "FMA3"})),
    # LLVM vectorizes for whatever CPU it is given: on x86 the baseline (SSE2), elsewhere the host's model.
    "generic": Target("generic", 128, 16, "x86-64" if _X86 else None, "" if _X86 else None, frozenset()),
}


def _cpu_features() -> frozenset[str]:
    from keydnn.backends.numba_cpu.codegen.cpu import cpu_features

    return cpu_features()


def native_tier() -> str:
    """The widest tier this CPU runs."""
    feats = _cpu_features()
    for name in ("avx512", "avx2"):
        if TIERS[name].requires <= feats:
            return name
    return "generic"


def runnable_tiers() -> list[str]:
    """Every tier this CPU runs, widest first (``.ci/run`` runs the parity tests on each)."""
    feats = _cpu_features()
    return [name for name, t in TIERS.items() if t.requires <= feats]


@functools.lru_cache(maxsize=1)
def current_target() -> Target:
    """The tier this process generates code for: ``$KEYDNN_CPU_TARGET`` if set, else the native one.

    The native tier compiles for the host CPU exactly (LLVM's model and features
    of this machine); a forced tier compiles for the tier's generic CPU model.
    Forcing a tier the CPU lacks is refused, naming what it lacks.
    """
    wanted = os.environ.get(ENV, "").strip().lower() or "native"
    native = native_tier()
    if wanted == "native":
        t = TIERS[native]
        return Target(t.name, t.vector_bits, t.registers, None, None, t.requires, t.l1_bytes, t.l2_bytes)
    if wanted not in TIERS:
        raise BackendError(f"{ENV}={wanted!r} is not a CPU target; supported: native, {', '.join(TIERS)}")
    target = TIERS[wanted]
    missing = sorted(target.requires - _cpu_features())
    if missing:
        raise BackendError(f"{ENV}={wanted} needs CPU features this CPU lacks ({', '.join(missing)}); "
                           f"this CPU runs at most the {native!r} tier")
    return target


def _numba_codegen_started() -> bool:
    """Whether numba has built its JIT code generator in this process (its target is then fixed)."""
    import sys

    registry = sys.modules.get("numba.core.registry")
    if registry is None:
        return False
    return "target_context" in vars(registry.cpu_target) or "_toplevel_target_context" in vars(registry.cpu_target)


def apply_to_numba() -> None:
    """Point numba's JIT at the current target (before it compiles anything in this process).

    Before numba is imported this only sets ``NUMBA_CPU_NAME`` /
    ``NUMBA_CPU_FEATURES`` (which child processes inherit). A forced tier that arrives after
    numba already compiled for another target is refused: the code would not
    be what the cache key says.
    """
    target = current_target()
    if target.llvm_cpu is None and target.llvm_features is None:
        return  # native: numba's default is the host CPU
    import sys

    if "numba" not in sys.modules:  # numba reads these when it is imported (nothing imported here)
        os.environ["NUMBA_CPU_NAME"] = target.llvm_cpu or ""
        os.environ["NUMBA_CPU_FEATURES"] = target.llvm_features or ""
        return
    import numba.core.config as config

    if config.CPU_NAME == target.llvm_cpu and config.CPU_FEATURES == target.llvm_features:
        return
    if _numba_codegen_started():
        raise BackendError(f"{ENV}={target.name} was set after numba had compiled code for another CPU target in "
                           "this process; set it before the first model is compiled (e.g. in the environment)")
    config.CPU_NAME, config.CPU_FEATURES = target.llvm_cpu, target.llvm_features
    logger.info("generating code for the %s tier (LLVM CPU %s)", target.name, target.llvm_cpu or "host")
