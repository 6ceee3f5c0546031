"""One shared-memory tiled GEMM template; conv2d (implicit GEMM) and dense instantiate it.

``C[g] = A[g] @ B[g]`` for every group ``g`` (``gridDim.z``), where an operand
is never materialized: the instantiating op supplies device functions that
*load* element (row, k) of A, element (k, col) of B, and say where result
(row, col) is *stored* and which bias entry it takes. For conv2d, B is the
im2col matrix, gathered straight from the NCHW input with padding as zeros
(implicit GEMM: no unfolded copy in memory) and results scatter back to NCHW.

Tiling: a block computes a BM x BN tile of C. Each step stages a BK-deep
slice of A (BK x BM) and of B (BK x BN) in shared memory, all threads
cooperating with coalesced loads; each thread then accumulates a TM x TN
register micro-tile from them. Its rows/columns are strided by the thread
grid (``ty + i*TY``, ``tx + j*TX``), so consecutive threads read consecutive
shared-memory words (no bank conflicts) and store consecutive output columns
(coalesced writes). The epilogue adds the bias and applies the fused
activation while the sums are still in registers.

Split-K: when a problem has too few tiles to fill the GPU (batch 1, late
small feature maps), ``gridDim.z`` also splits the reduction into ``splits``
chunks; each writes raw partial sums into a scratch buffer and
``splitk_reduce`` adds them in a fixed order (deterministic, no atomics) and
applies bias and activation.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numba
import numpy as np

from keydnn.backends.numba_cuda.activations import Epilogue, make_activation
from keydnn.backends.numba_cuda.device import cuda, multiprocessor_count, simulator_enabled
from keydnn.backends.numba_cuda.lowering import THREADS, configure, grid_1d

__all__ = ["Tile", "TILES", "GemmOperands", "make_gemm", "gemm_grid", "choose_tile", "choose_splits", "split_chunk",
           "make_splitk_reduce", "launch_reduce", "FORCE_TILE", "FORCE_SPLITS"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tile:
    """Block tile BM x BN (= TM*TY x TN*TX), reduction step BK, TY x TX threads.

    ``max_registers`` caps registers per thread so that two 256-thread blocks
    fit an SM (uncapped, ptxas takes ~140 on sm_90: one block, 8 warps).
    """

    tm: int
    tn: int
    ty: int
    tx: int
    bk: int
    max_registers: Optional[int] = 128

    @property
    def bm(self) -> int:
        return self.tm * self.ty

    @property
    def bn(self) -> int:
        return self.tn * self.tx

    @property
    def threads(self) -> int:
        return self.ty * self.tx


#: Tiles by name; shared memory per block is BK * (BM + BN) elements (4 KiB for float32 64x64).
TILES: dict[str, Tile] = {
    "64x64": Tile(tm=4, tn=4, ty=16, tx=16, bk=8),  # the workhorse: 16 outputs per thread
    "32x64": Tile(tm=2, tn=4, ty=16, tx=16, bk=8),  # few output channels
    "16x64": Tile(tm=1, tn=4, ty=16, tx=16, bk=16),  # fewer still (e.g. 8 or 16 filters)
    "8x32": Tile(tm=1, tn=1, ty=8, tx=32, bk=32),  # GEMV-like: a handful of rows (small batch dense)
    # The simulator runs each thread as a Python thread: tiny blocks, still several per problem.
    "sim": Tile(tm=2, tn=2, ty=2, tx=4, bk=4, max_registers=None),
}

#: Tests set these to exercise one tile / a split-K on every shape.
FORCE_TILE: Optional[str] = None
FORCE_SPLITS: Optional[int] = None


def choose_tile(rows: int) -> Tile:
    """Smallest row tile that covers the rows (output channels per group, or the batch for dense)."""
    if FORCE_TILE is not None:
        return TILES[FORCE_TILE]
    if simulator_enabled():
        return TILES["sim"]
    for name, limit in (("8x32", 8), ("16x64", 16), ("32x64", 32)):
        if rows <= limit:
            return TILES[name]
    return TILES["64x64"]


def choose_splits(tiles: int, k_size: int, tile: Tile) -> int:
    """Split the reduction when the tiles alone cannot fill twice the SMs; keep >= 8 steps per split."""
    if FORCE_SPLITS is not None:
        return max(1, min(FORCE_SPLITS, math.ceil(k_size / tile.bk)))
    target = 2 * multiprocessor_count()
    if tiles >= target:
        return 1
    by_depth = k_size // (8 * tile.bk)
    return max(1, min(math.ceil(target / tiles), by_depth, 32))


@dataclass(frozen=True)
class GemmOperands:
    """How an op presents its operands to the template: device functions ``(geom, g, row, col) -> int``.

    ``a_index``/``b_index`` give the flat position of A[g][row, k] / B[g][k, col]
    in the operand array, or -1 for an implicit zero (conv padding);
    ``out_index``/``bias_index`` where result (row, col) goes and which bias it
    takes. ``a_k_fast``: consecutive threads load consecutive k of A (A is
    row-major rows x K in memory) rather than consecutive rows (K x rows).
    """

    a_index: Callable
    b_index: Callable
    out_index: Callable
    bias_index: Callable
    a_k_fast: bool


@functools.lru_cache(maxsize=None)
def make_gemm(ops: GemmOperands, tile: Tile, dtype_name: str, code: int) -> Callable:
    """Compile-time specialization of the template (operands, tile, dtype, epilogue); launch with
    ``[(ceil(cols/BN), ceil(rows/BM), groups*splits), (TX, TY)]`` and
    ``(a, b, bias, out, geom, rows, cols, k, splits, k_chunk, out_size, p0..p3)``."""
    TM, TN, TY, TX, BK = tile.tm, tile.tn, tile.ty, tile.tx, tile.bk
    BM, BN, NT = tile.bm, tile.bn, tile.threads
    A_K_FAST = ops.a_k_fast
    a_index, b_index, out_index, bias_index = ops.a_index, ops.b_index, ops.out_index, ops.bias_index
    nbtype = numba.from_dtype(np.dtype(dtype_name))
    zero = np.dtype(dtype_name).type(0)
    act = make_activation(dtype_name, code)
    options = {} if simulator_enabled() or tile.max_registers is None else {"max_registers": tile.max_registers}

    @cuda.jit(**options)
    def gemm(a, b, bias, out, geom, rows, cols, k_size, splits, k_chunk, out_size, p0, p1, p2, p3):
        z = cuda.blockIdx.z
        g = z // splits
        s = z - g * splits
        kb = s * k_chunk
        ke = kb + k_chunk if kb + k_chunk < k_size else k_size
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        ty = cuda.threadIdx.y
        tx = cuda.threadIdx.x
        tid = ty * TX + tx
        a_s = cuda.shared.array((BK, BM), nbtype)
        b_s = cuda.shared.array((BK, BN), nbtype)
        acc = cuda.local.array((TM, TN), nbtype)
        ra = cuda.local.array(TM, nbtype)
        rb = cuda.local.array(TN, nbtype)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = zero
        for k0 in range(kb, ke, BK):
            for e in range(tid, BK * BM, NT):
                if A_K_FAST:
                    kk = e % BK
                    mm = e // BK
                else:
                    kk = e // BM
                    mm = e - kk * BM
                m = m0 + mm
                k = k0 + kk
                ia = a_index(geom, g, m, k) if (m < rows and k < ke) else -1
                a_s[kk, mm] = a[ia] if ia >= 0 else zero
            for e in range(tid, BK * BN, NT):
                kk = e // BN
                nn = e - kk * BN
                n = n0 + nn
                k = k0 + kk
                ib = b_index(geom, g, k, n) if (n < cols and k < ke) else -1
                b_s[kk, nn] = b[ib] if ib >= 0 else zero
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    ra[i] = a_s[kk, ty + i * TY]
                for j in range(TN):
                    rb[j] = b_s[kk, tx + j * TX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(TM):
            m = m0 + ty + i * TY
            if m < rows:
                for j in range(TN):
                    n = n0 + tx + j * TX
                    if n < cols:
                        if splits == 1:
                            v = acc[i, j] + bias[bias_index(geom, g, m, n)]
                            out[out_index(geom, g, m, n)] = act(v, p0, p1, p2, p3)
                        else:
                            out[s * out_size + out_index(geom, g, m, n)] = acc[i, j]

    return gemm


def gemm_grid(rows: int, cols: int, groups: int, splits: int, tile: Tile) -> tuple[tuple[int, ...], tuple[int, int]]:
    """(grid, block) of one template launch."""
    return (math.ceil(cols / tile.bn), math.ceil(rows / tile.bm), groups * splits), (tile.tx, tile.ty)


def split_chunk(k_size: int, splits: int, tile: Tile) -> int:
    """Reduction depth per split, a multiple of BK so that only the last chunk is ragged."""
    return math.ceil(math.ceil(k_size / splits) / tile.bk) * tile.bk


@functools.lru_cache(maxsize=None)
def make_splitk_reduce(dtype_name: str, code: int) -> Callable:
    """``out[i] = act(sum_s partial[s*size + i] + bias[(i // inner) % period])``, splits summed in order."""
    act = make_activation(dtype_name, code)

    @cuda.jit
    def splitk_reduce(partial, out, bias, size, splits, inner, period, p0, p1, p2, p3):
        start = cuda.grid(1)
        stride = cuda.gridsize(1)
        for i in range(start, size, stride):
            v = partial[i]
            for s in range(1, splits):
                v += partial[s * size + i]
            v += bias[(i // inner) % period]
            out[i] = act(v, p0, p1, p2, p3)

    return splitk_reduce


def launch_reduce(dtype_name: str, partial, out, bias, size: int, splits: int, inner: int, period: int,
                  epilogue: Epilogue) -> None:
    """Run ``splitk_reduce`` over ``size`` outputs."""
    configure(make_splitk_reduce(dtype_name, epilogue.code), grid_1d(size), THREADS)(
        partial, out, bias, size, splits, inner, period, *epilogue.params)
