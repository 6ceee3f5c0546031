"""Intrinsics of shared stage functions (``cg_stagefn``): loads of their parameters straight from addresses.

A stage function reads each of its numbers from a parameter vector. As array
indexing (``q[k]``), every read is typed and lowered through numba's generic
array machinery, which made that the larger part of compiling a stage
function; ``ld_i64`` / ``ld_f64`` are one pointer offset and one load each.
Imported only by the generated stage modules (it imports numba).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["ld_i64", "ld_f64"]


def _load(context, builder, sig, args, lltype):
    base = context.cast(builder, args[0], sig.args[0], types.int64)
    index = context.cast(builder, args[1], sig.args[1], types.int64)
    ptr = builder.inttoptr(base, lltype.as_pointer())
    return builder.load(builder.gep(ptr, [index]), align=8)


@intrinsic
def ld_i64(typingctx, address, index):
    """The int64 at ``address + 8 * index``."""
    if not isinstance(address, types.Integer) or not isinstance(index, types.Integer):
        raise TypeError("ld_i64 takes an integer address and index")

    def codegen(context, builder, sig, args):
        return _load(context, builder, sig, args, ir.IntType(64))

    return types.int64(address, index), codegen


@intrinsic
def ld_f64(typingctx, address, index):
    """The float64 at ``address + 8 * index``."""
    if not isinstance(address, types.Integer) or not isinstance(index, types.Integer):
        raise TypeError("ld_f64 takes an integer address and index")

    def codegen(context, builder, sig, args):
        return _load(context, builder, sig, args, ir.DoubleType())

    return types.float64(address, index), codegen
