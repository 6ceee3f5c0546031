"""Machine-level intrinsics of the generated code: element access without numba's wraparound, int64 atomics, a spin-wait hint, arrays over raw addresses,
calls through addresses and the cycle counter.

The atomics (``atomic_add``, ``atomic_load``, ``atomic_store``, ``cpu_relax``) on int64 arrays are what the
generated code's work-claiming scheduler uses between threads; they are sequentially consistent.
``farray`` and ``fcall`` are how C-callable thunks receive arrays and how generated code calls helpers
without linking them in. Split from ``simd`` (the vector intrinsics), which re-exports every name here.
"""

from __future__ import annotations

import logging
import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["atomic_add", "atomic_load", "atomic_store", "cpu_relax", "farray", "fcall", "cycles", "load_at", "store_at"]

logger = logging.getLogger(__name__)

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _int64_ptr(context, builder, arrty, arr, index):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.gep(ary.data, [index], source_etype=ir.IntType(64))


def _check_int_array(arr) -> None:
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        raise TypeError(f"atomics need an int64 array, got {arr}")


@intrinsic
def atomic_add(typingctx, arr, index, value):
    """``arr[index] += value`` atomically; returns the value before the add."""
    _check_int_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _int64_ptr(context, builder, arr, args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")

    return types.int64(arr, index, value), codegen


@intrinsic
def atomic_load(typingctx, arr, index):
    _check_int_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _int64_ptr(context, builder, arr, args[0], args[1])
        return builder.load_atomic(ptr, "seq_cst", 8, typ=ir.IntType(64))

    return types.int64(arr, index), codegen


@intrinsic
def atomic_store(typingctx, arr, index, value):
    _check_int_array(arr)

    def codegen(context, builder, sig, args):
        ptr = _int64_ptr(context, builder, arr, args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return types.none(arr, index, value), codegen


@intrinsic
def cpu_relax(typingctx):
    """A spin-wait hint (x86 ``pause``; nothing elsewhere)."""

    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def farray(typingctx, address, dtype):
    """A 1-D C-contiguous array view of ``dtype`` values starting at a raw ``address`` (an int).

    Its length is nominal (2**40); indexing is unchecked like every array here. Used by the
    C-callable thunks, which receive arrays as addresses.
    """
    if not isinstance(address, types.Integer):
        raise TypeError("farray needs an integer address")
    elem = dtype.instance_type if isinstance(dtype, (types.NumberClass, types.DType)) else dtype.dtype
    arrty = types.Array(elem, 1, "C")

    def codegen(context, builder, sig, args):
        from numba.np.arrayobj import populate_array

        ary = context.make_array(arrty)(context, builder)
        llelem = context.get_data_type(elem)
        ptr = builder.inttoptr(context.cast(builder, args[0], sig.args[0], types.intp), llelem.as_pointer())
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(llelem))
        populate_array(ary, data=ptr, shape=[context.get_constant(types.intp, 1 << 40)], strides=[itemsize],
                       itemsize=itemsize, meminfo=None)
        return ary._getvalue()

    return arrty(address, dtype), codegen


@intrinsic
def fcall(typingctx, address, *args):
    """Call the C function at ``address`` with int64 / float64 arguments (void result).

    The callee is a ``numba.cfunc`` whose signature lists the same kinds in the same order;
    calling through an address keeps the callee's code out of the caller's compiled library.
    """
    argtys = args[0] if len(args) == 1 and isinstance(args[0], types.BaseTuple) else args
    for t in argtys:
        if not isinstance(t, (types.Integer, types.Float, types.Boolean)):
            raise TypeError(f"fcall passes ints and floats only, got {t}")

    def codegen(context, builder, sig, llargs):
        values = []
        lltypes = []
        if len(llargs) == 2 and isinstance(sig.args[1], types.BaseTuple):
            items = [builder.extract_value(llargs[1], i) for i in range(len(sig.args[1]))]
            tys = list(sig.args[1])
        else:
            items, tys = list(llargs[1:]), list(sig.args[1:])
        for v, t in zip(items, tys):
            target = types.float64 if isinstance(t, types.Float) else types.int64
            values.append(context.cast(builder, v, t, target))
            lltypes.append(ir.DoubleType() if target == types.float64 else ir.IntType(64))
        fnty = ir.FunctionType(ir.VoidType(), lltypes)
        fn = builder.inttoptr(context.cast(builder, llargs[0], sig.args[0], types.int64), fnty.as_pointer())
        builder.call(fn, values)
        return context.get_dummy_value()

    return types.none(address, types.StarArgTuple.from_types(tuple(argtys))), codegen


@intrinsic
def cycles(typingctx):
    """The CPU's cycle counter (``llvm.readcyclecounter``), for profiling generated code."""

    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return types.int64(), codegen


@intrinsic
def load_at(typingctx, arr, index):
    """``arr[index]`` for a non-negative index, without numba's negative-index wraparound (which
    costs a compare and a conditional move per load in loops LLVM cannot prove non-negative)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1):
        raise TypeError(f"load_at needs a 1-D array, got {arr}")

    def codegen(context, builder, sig, args):
        ary = context.make_array(arr)(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        return builder.load(builder.gep(ary.data, [idx], source_etype=context.get_data_type(arr.dtype)))

    return arr.dtype(arr, index), codegen


@intrinsic
def store_at(typingctx, arr, index, value):
    """``arr[index] = value`` for a non-negative index, without negative-index wraparound."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1):
        raise TypeError(f"store_at needs a 1-D array, got {arr}")

    def codegen(context, builder, sig, args):
        ary = context.make_array(arr)(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        val = context.cast(builder, args[2], sig.args[2], arr.dtype)
        builder.store(val, builder.gep(ary.data, [idx], source_etype=context.get_data_type(arr.dtype)))
        return context.get_dummy_value()

    return types.none(arr, index, value), codegen
