"""Compile every numba-cuda kernel to PTX for a real GPU architecture, without a GPU.

The simulator runs kernels as Python, so it cannot catch what only the CUDA
target rejects (typing of device code, unsupported math, shared/local array
declarations). ``numba.cuda.compile_ptx`` needs libNVVM but no driver, so this
script type-checks and lowers every kernel, in every dtype and tile, with the
argument types the lowerings pass. Run it outside the simulator:

    python tests/cuda/ptx_check.py [--cc 9.0] [--ptxas]   # CUDA_HOME=... if libNVVM is not found

``--ptxas`` also assembles each kernel (ptxas from the same toolkit) and
prints registers and spills per thread. Exit status 0 when all compile, 1 when some do not, 3 without libNVVM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Iterator

from numba import cuda
from numba import types as nt

from keydnn.backends.numba_cuda import gemm, kernels_conv, kernels_dense, kernels_elementwise, kernels_pool
from keydnn.backends.numba_cuda import kernels_merge, kernels_shape
from keydnn.backends.epilogues import ACTIVATION_CODES, GELU, LINEAR, RELU, RELU0


def kernels(dtype: str, quick: bool = False) -> Iterator[tuple[str, object, tuple]]:
    """(name, dispatcher, argument types) for every kernel the lowerings launch; epilogue kernels once
    per activation code (the code is compiled in), or for two codes when ``quick``."""
    f = nt.float32 if dtype == "float32" else nt.float64
    arr, i64 = f[::1], nt.int64
    epilogue = (f, f, f, f)
    codes = [RELU0, GELU] if quick else sorted(set(ACTIVATION_CODES.values()) | {RELU0, RELU})

    def geom(n: int) -> nt.UniTuple:
        return nt.UniTuple(i64, n)

    for tile_name, tile in gemm.TILES.items():
        for op_name, ops, n in (("conv", kernels_conv._OPERANDS, 17), ("dense", kernels_dense._OPERANDS, 2)):
            for code in (RELU0,) if quick else (LINEAR, RELU0, GELU):
                yield (f"gemm[{op_name},{tile_name},act {code}]", gemm.make_gemm(ops, tile, dtype, code),
                       (arr, arr, arr, arr, geom(n), i64, i64, i64, i64, i64, i64, *epilogue))
    for code in codes:
        yield (f"splitk_reduce[act {code}]", gemm.make_splitk_reduce(dtype, code),
               (arr, arr, arr, i64, i64, i64, i64, *epilogue))
        yield (f"conv_direct[act {code}]", kernels_conv._direct_kernel(dtype, code),
               (arr, arr, arr, arr, geom(17), i64, *epilogue))
        yield f"activate[act {code}]", kernels_elementwise._activate_kernel(dtype, code), (arr, arr, i64, *epilogue)
    yield "softmax", kernels_elementwise._softmax_kernel(dtype), (arr, arr, i64, i64, i64)
    yield "affine", kernels_elementwise._affine_kernel(dtype), (arr, arr, i64, arr, arr, i64, i64)
    yield "prelu", kernels_elementwise._prelu_kernel(dtype), (arr, arr, i64, arr, i64, i64)
    yield "pool2d", kernels_pool._pool_kernel(dtype), (arr, arr, i64, geom(10), i64)
    yield ("global_pool", kernels_pool._global_kernel(dtype, kernels_pool.REDUCE_THREADS),
           (arr, arr, i64, i64, i64))
    yield "gather2d", kernels_shape._gather2d_kernel(dtype), (arr, arr, i64, geom(8), f)
    for rank in (2, 3, 4, 5):
        yield f"transpose[rank {rank}]", kernels_shape.transpose_kernel, (arr, arr, i64, geom(rank), geom(rank))
    for kind, code in kernels_merge.MERGE_CODES.items():  # the operand count is a tuple length: compiled per arity
        for n in (2,) if quick and kind != "add" else (2, 3):
            yield (f"merge[{kind} x{n}]", kernels_merge._merge_kernel(dtype, code),
                   (nt.UniTuple(arr, n), arr, i64, i64[::1], i64, f))
    for n in (1, 2, 3) if not quick else (2, 4):
        yield f"concat[x{n}]", kernels_merge.concat_kernel, (nt.UniTuple(arr, n), arr, i64, i64, geom(n + 1))


def ptxas_report(ptx: str, cc: tuple[int, int], max_registers: int | None = None) -> str:
    """Registers / spills per thread, from ptxas -v (the same toolkit as libNVVM), under the kernel's cap."""
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    ptxas = shutil.which("ptxas") or os.path.join(home, "bin", "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        cap = [f"-maxrregcount={max_registers}"] if max_registers else []
        out = subprocess.run([ptxas, "-v", f"-arch=sm_{cc[0]}{cc[1]}", *cap, src, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    lines = [ln.split("info    : ")[-1] for ln in out.stderr.splitlines() if "registers" in ln or "spill" in ln]
    return "; ".join(lines) if out.returncode == 0 else f"ptxas failed: {out.stderr.strip()}"


def _pretend_current_device(cc: tuple[int, int]) -> None:
    """Typing a call to a device function compiles it for the *current* device, which needs a driver;
    with none, answer for the architecture we compile for (this script only; nothing is launched)."""
    from numba.cuda import dispatcher

    class _Device:
        compute_capability = cc

    dispatcher.get_current_device = lambda: _Device()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 8.0 or 9.0")
    parser.add_argument("--ptxas", action="store_true", help="assemble and report registers/spills")
    parser.add_argument("--quick", action="store_true", help="float32, two activation codes (the test's run)")
    args = parser.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        print("ptx_check: unset NUMBA_ENABLE_CUDASIM (the simulator compiles nothing)", file=sys.stderr)
        return 2
    cc = tuple(int(p) for p in args.cc.split("."))
    try:
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()
    except Exception as exc:  # no CUDA toolkit: nothing to compile with
        print(f"ptx_check: libNVVM is not available ({type(exc).__name__}); set CUDA_HOME to a CUDA toolkit")
        return 3
    _pretend_current_device(cc)
    failures = 0
    for dtype in ("float32",) if args.quick else ("float32", "float64"):
        for name, dispatcher, argtypes in kernels(dtype, args.quick):
            try:
                ptx, _ = cuda.compile_ptx(dispatcher.py_func, argtypes, cc=cc)
            except Exception as exc:  # report every kernel, not only the first failure
                failures += 1
                print(f"FAIL {dtype} {name}: {type(exc).__name__}: {exc}".splitlines()[0])
                continue
            cap = dispatcher.targetoptions.get("max_registers")
            extra = f"  [{ptxas_report(ptx, cc, cap)}]" if args.ptxas else ""
            print(f"ok   {dtype} {name}{extra}")
    print(f"{failures} failed" if failures else "all kernels compiled")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
