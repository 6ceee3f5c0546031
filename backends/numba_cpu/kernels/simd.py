"""Explicit SIMD vectors and atomics for numba code, as LLVM vector types behind intrinsics.

LLVM's auto-vectorizer cannot be relied on to keep a GEMM micro-tile in
registers; these intrinsics let a kernel say exactly that. A vector is a numba
value of type ``Vec(dtype, lanes)`` (an LLVM ``<lanes x float|double>``, kept in
SIMD registers once LLVM promotes the local variables). The operations are the
few a register-blocked GEMM and its epilogue need: load, store (whole or the
first ``n`` lanes), broadcast, fused multiply-add, add, max, select.

Loads and stores take a 1-D contiguous array and an element index; they are
unaligned and unchecked (the caller guarantees ``index + lanes`` is in
bounds, or uses ``vstore_n``/``vload_n`` for a partial vector).

The scalar element access without wraparound (``load_at``, ``store_at``),
the atomics, raw-address arrays, calls through addresses and the cycle
counter live in ``machine`` (re-exported here, where generated code and the
thunks import them from).

The lane count is chosen per machine (``cpu.native_lanes``): 512-bit vectors where
the CPU has AVX-512, 256-bit otherwise; the IR is the same either way, LLVM
legalizes wider vectors into several registers where needed.
"""

from __future__ import annotations

import functools
import logging

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import RequireLiteralValue
from numba.extending import intrinsic, models, register_model

from keydnn.backends.numba_cpu.kernels.machine import (  # noqa: F401  (re-exported: generated code imports them here)
    atomic_add, atomic_load, atomic_store, cpu_relax, cycles, farray, fcall, load_at, store_at,
)

__all__ = [
    "Vec", "vec_type", "vload", "vload_n", "vstore", "vstore_n", "vsplat", "vzero", "vfma",
    "vadd", "vmul", "vsub", "vmax_zero", "vrelu_general", "vhsum", "atomic_add", "atomic_load", "atomic_store", "cpu_relax",
    "farray", "fcall", "cycles", "load_at", "store_at", "vbroadcast", "vstore_transposed", "veven", "vodd",
]

logger = logging.getLogger(__name__)


class Vec(types.Type):
    """A SIMD vector of ``lanes`` float32 or float64 values."""

    def __init__(self, dtype: types.Float, lanes: int) -> None:
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"vec<{dtype}x{lanes}>")


@register_model(Vec)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type: Vec) -> None:
        elem = ir.FloatType() if fe_type.dtype == types.float32 else ir.DoubleType()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.lanes))


@functools.lru_cache(maxsize=None)
def vec_type(dtype: types.Float, lanes: int) -> Vec:
    return Vec(dtype, lanes)


def _llvm_elem(dtype: types.Float) -> ir.Type:
    return ir.FloatType() if dtype == types.float32 else ir.DoubleType()


def _data_ptr(context, builder, arrty, arr, index):
    ary = context.make_array(arrty)(context, builder, arr)
    return builder.gep(ary.data, [index], source_etype=_llvm_elem(arrty.dtype))


def _check_array(arr) -> None:
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype in (types.float32, types.float64)):
        raise TypeError(f"SIMD access needs a 1-D float array, got {arr}")


def _lanes_literal(lanes) -> int:
    if not isinstance(lanes, types.IntegerLiteral):
        raise RequireLiteralValue("the lane count must be a compile-time integer literal")
    return lanes.literal_value


@intrinsic
def vload(typingctx, arr, index, lanes):
    """``arr[index : index + lanes]`` as a vector (unaligned, unchecked)."""
    _check_array(arr)
    n = _lanes_literal(lanes)
    vt = vec_type(arr.dtype, n)

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(_llvm_elem(arr.dtype), n)
        ptr = builder.bitcast(_data_ptr(context, builder, arr, args[0], args[1]), vty.as_pointer())
        return builder.load(ptr, align=arr.dtype.bitwidth // 8, typ=vty)

    return vt(arr, index, lanes), codegen


@intrinsic
def vstore(typingctx, arr, index, vec):
    """``arr[index : index + lanes] = vec`` (unaligned, unchecked)."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        ptr = builder.bitcast(_data_ptr(context, builder, arr, args[0], args[1]), args[2].type.as_pointer())
        builder.store(args[2], ptr, align=arr.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(arr, index, vec), codegen


def _lane_mask(builder, lanes: int, count):
    """<lanes x i1>: lane i < count."""
    idx = ir.Constant(ir.VectorType(ir.IntType(64), lanes), [i for i in range(lanes)])
    splat = builder.insert_element(ir.Constant(ir.VectorType(ir.IntType(64), lanes), None), count,
                                   ir.Constant(ir.IntType(32), 0))
    splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))
    return builder.icmp_signed("<", idx, splat)


def _masked_intrinsic(builder, name: str, vty: ir.VectorType):
    ptr = ir.PointerType()
    mask = ir.VectorType(ir.IntType(1), vty.count)
    if name == "load":
        fnty = ir.FunctionType(vty, [ptr, ir.IntType(32), mask, vty])
        fname = f"llvm.masked.load.v{vty.count}{_suffix(vty)}.p0"
    else:
        fnty = ir.FunctionType(ir.VoidType(), [vty, ptr, ir.IntType(32), mask])
        fname = f"llvm.masked.store.v{vty.count}{_suffix(vty)}.p0"
    return cgutils.get_or_insert_function(builder.module, fnty, fname)


def _suffix(vty: ir.VectorType) -> str:
    return "f32" if isinstance(vty.element, ir.FloatType) else "f64"


@intrinsic
def vstore_n(typingctx, arr, index, vec, count):
    """Store the first ``count`` lanes of ``vec`` at ``arr[index:]`` (a masked store: nothing else is touched)."""
    _check_array(arr)

    def codegen(context, builder, sig, args):
        vty = args[2].type
        ptr = _data_ptr(context, builder, arr, args[0], args[1])
        cnt = context.cast(builder, args[3], sig.args[3], types.int64)
        fn = _masked_intrinsic(builder, "store", vty)
        builder.call(fn, [args[2], ptr, ir.Constant(ir.IntType(32), arr.dtype.bitwidth // 8),
                          _lane_mask(builder, vty.count, cnt)])
        return context.get_dummy_value()

    return types.none(arr, index, vec, count), codegen


def _transpose(builder, rows: list, vty: ir.VectorType) -> list:
    """The ``L x L`` transpose of ``rows`` (at most L vectors of L lanes; missing rows are undefined):
    swap the off-diagonal ``h x h`` blocks of every ``2h x 2h`` block, for h = L/2 ... 1 (two-source
    shuffles, L log L of them; LLVM folds those of undefined rows)."""
    lanes = vty.count
    m = list(rows) + [ir.Constant(vty, ir.Undefined)] * (lanes - len(rows))
    i32 = ir.IntType(32)
    h = lanes // 2
    while h >= 1:
        lo = ir.Constant(ir.VectorType(i32, lanes), [c if not c & h else lanes + c - h for c in range(lanes)])
        hi = ir.Constant(ir.VectorType(i32, lanes), [c + h if not c & h else lanes + c for c in range(lanes)])
        out = list(m)
        for r in range(lanes):
            if not r & h:
                out[r] = builder.shuffle_vector(m[r], m[r + h], lo)
                out[r + h] = builder.shuffle_vector(m[r], m[r + h], hi)
        m = out
        h //= 2
    return m


@intrinsic
def vstore_transposed(typingctx, arr, index, stride, rows, cols, *vecs):
    """Store a tile held as vectors along columns, transposed: lane ``l`` of ``vecs[m]`` goes to
    ``arr[index + m + l * stride]`` for ``m < rows`` and ``l < cols`` (a tile of output pixels x output
    channels written into channels-first planes). The vectors are transposed in registers (shuffles) in
    groups of L, then each column is one masked store of ``rows`` lanes: a fifth of the instructions of
    storing lane by lane."""
    _check_array(arr)
    vectys = vecs[0] if len(vecs) == 1 and isinstance(vecs[0], types.BaseTuple) else vecs
    if not vectys or not all(isinstance(t, Vec) for t in vectys):
        raise TypeError("vstore_transposed needs one or more vectors")

    def codegen(context, builder, sig, llargs):
        if len(llargs) == 6 and isinstance(sig.args[5], types.BaseTuple):
            values = [builder.extract_value(llargs[5], i) for i in range(len(sig.args[5]))]
        else:
            values = list(llargs[5:])
        vty = values[0].type
        lanes = vty.count
        i64 = ir.IntType(64)
        base = context.cast(builder, llargs[1], sig.args[1], types.int64)
        step = context.cast(builder, llargs[2], sig.args[2], types.int64)
        nrows = context.cast(builder, llargs[3], sig.args[3], types.int64)
        ncols = context.cast(builder, llargs[4], sig.args[4], types.int64)
        ary = context.make_array(arr)(context, builder, llargs[0])
        elem = _llvm_elem(arr.dtype)
        fn = _masked_intrinsic(builder, "store", vty)
        align = ir.Constant(ir.IntType(32), arr.dtype.bitwidth // 8)
        for q in range(0, len(values), lanes):
            left = builder.sub(nrows, ir.Constant(i64, q))
            with builder.if_then(builder.icmp_signed(">", left, ir.Constant(i64, 0))):
                mask = _lane_mask(builder, lanes, left)
                cols_t = _transpose(builder, values[q:q + lanes], vty)
                for c in range(lanes):
                    with builder.if_then(builder.icmp_signed(">", ncols, ir.Constant(i64, c))):
                        at = builder.add(builder.add(base, ir.Constant(i64, q)), builder.mul(step, ir.Constant(i64, c)))
                        builder.call(fn, [cols_t[c], builder.gep(ary.data, [at], source_etype=elem), align, mask])
        return context.get_dummy_value()

    return types.none(arr, index, stride, rows, cols, types.StarArgTuple.from_types(tuple(vectys))), codegen


def _half_of_pair(parity: int):
    def impl(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            raise TypeError("needs two vectors of one type")

        def codegen(context, builder, sig, args):
            lanes = args[0].type.count
            mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [2 * i + parity for i in range(lanes)])
            return builder.shuffle_vector(args[0], args[1], mask)

        return a(a, b), codegen

    impl.__doc__ = (f"The {'odd' if parity else 'even'}-indexed lanes of ``a`` followed by ``b`` (one shuffle): "
                    "with the other half, splits 2L interleaved values into their two phases.")
    return intrinsic(impl)


veven = _half_of_pair(0)
vodd = _half_of_pair(1)


@intrinsic
def vload_n(typingctx, arr, index, count, lanes):
    """The first ``count`` lanes from ``arr[index:]``, zeros in the rest (a masked load: nothing past is read)."""
    _check_array(arr)
    n = _lanes_literal(lanes)
    vt = vec_type(arr.dtype, n)

    def codegen(context, builder, sig, args):
        vty = ir.VectorType(_llvm_elem(arr.dtype), n)
        ptr = _data_ptr(context, builder, arr, args[0], args[1])
        cnt = context.cast(builder, args[2], sig.args[2], types.int64)
        fn = _masked_intrinsic(builder, "load", vty)
        return builder.call(fn, [ptr, ir.Constant(ir.IntType(32), arr.dtype.bitwidth // 8),
                                 _lane_mask(builder, n, cnt), ir.Constant(vty, None)])

    return vt(arr, index, count, lanes), codegen


def _splat(builder, value, vty: ir.VectorType):
    undef = ir.Constant(vty, None)
    v = builder.insert_element(undef, value, ir.Constant(ir.IntType(32), 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(ir.IntType(32), vty.count), [0] * vty.count))


@intrinsic
def vsplat(typingctx, value, like):
    """A vector of ``like``'s type with every lane ``value`` (cast to the lane type)."""
    if not isinstance(like, Vec):
        raise TypeError("vsplat needs a vector to take its type from")

    def codegen(context, builder, sig, args):
        scalar = context.cast(builder, args[0], sig.args[0], like.dtype)
        return _splat(builder, scalar, args[1].type)

    return like(value, like), codegen


@intrinsic
def vzero(typingctx, dtype_of, lanes):
    """A zero vector of ``lanes`` lanes of the element type of array ``dtype_of``."""
    n = _lanes_literal(lanes)
    vt = vec_type(dtype_of.dtype, n)

    def codegen(context, builder, sig, args):
        return ir.Constant(ir.VectorType(_llvm_elem(dtype_of.dtype), n), [0.0] * n)

    return vt(dtype_of, lanes), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """``a * b + c`` lane by lane, fused (one rounding)."""
    if not (isinstance(a, Vec) and a == b == c):
        raise TypeError("vfma needs three vectors of one type")

    def codegen(context, builder, sig, args):
        vty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]),
                                            f"llvm.fma.v{vty.count}{_suffix(vty)}")
        return builder.call(fn, list(args))

    return a(a, b, c), codegen


def _binary(op: str):
    @intrinsic
    def impl(typingctx, a, b):
        if not (isinstance(a, Vec) and a == b):
            raise TypeError(f"{op} needs two vectors of one type")

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return a(a, b), codegen

    return impl


vadd = _binary("fadd")
vmul = _binary("fmul")
vsub = _binary("fsub")


@intrinsic
def vmax_zero(typingctx, a):
    """ReLU: lanes > 0 keep their value, all others (NaN included) become 0 (the reference's x * (x > 0))."""
    if not isinstance(a, Vec):
        raise TypeError("vmax_zero needs a vector")

    def codegen(context, builder, sig, args):
        zero = ir.Constant(args[0].type, [0.0] * a.lanes)
        return builder.select(builder.fcmp_ordered(">", args[0], zero), args[0], zero)

    return a(a), codegen


@intrinsic
def vrelu_general(typingctx, a, threshold, max_value, has_max, slope):
    """Keras relu with threshold, max_value (when ``has_max``) and negative_slope, lane by lane,
    in the reference's order: x if x > threshold else 0, clipped to [0, max_value], minus
    slope * max(threshold - x, 0)."""
    if not isinstance(a, Vec):
        raise TypeError("vrelu_general needs a vector")

    def codegen(context, builder, sig, args):
        x = args[0]
        vty = x.type
        zero = ir.Constant(vty, [0.0] * a.lanes)

        def splat(i):
            return _splat(builder, context.cast(builder, args[i], sig.args[i], a.dtype), vty)

        thr, mx, slope = splat(1), splat(2), splat(4)
        y = builder.select(builder.fcmp_ordered(">", x, thr), x, zero)
        has = builder.icmp_signed("!=", context.cast(builder, args[3], sig.args[3], types.int64),
                                  ir.Constant(ir.IntType(64), 0))
        clipped = builder.select(builder.fcmp_ordered("<", y, zero), zero, y)
        clipped = builder.select(builder.fcmp_ordered(">", clipped, mx), mx, clipped)
        y = builder.select(has, clipped, y)
        under = builder.fsub(thr, x)
        under = builder.select(builder.fcmp_ordered(">", under, zero), under, zero)
        return builder.fsub(y, builder.fmul(slope, under))

    return a(a, threshold, max_value, has_max, slope), codegen


@intrinsic
def vhsum(typingctx, a):
    """The sum of a vector's lanes."""
    if not isinstance(a, Vec):
        raise TypeError("vhsum needs a vector")

    def codegen(context, builder, sig, args):
        vty = args[0].type
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vty.element, [vty.element, vty]),
            f"llvm.vector.reduce.fadd.v{vty.count}{_suffix(vty)}")
        return builder.call(fn, [ir.Constant(vty.element, 0.0), args[0]])

    return a.dtype(a), codegen


@intrinsic
def vbroadcast(typingctx, arr, index, like):
    """A vector of ``like``'s type with every lane ``arr[index]`` (a broadcast load, no wraparound)."""
    if not isinstance(like, Vec):
        raise TypeError("vbroadcast needs a vector to take its type from")

    def codegen(context, builder, sig, args):
        ary = context.make_array(arr)(context, builder, args[0])
        idx = context.cast(builder, args[1], sig.args[1], types.intp)
        value = builder.load(builder.gep(ary.data, [idx], source_etype=context.get_data_type(arr.dtype)))
        return _splat(builder, context.cast(builder, value, arr.dtype, like.dtype), args[2].type)

    return like(arr, index, like), codegen
