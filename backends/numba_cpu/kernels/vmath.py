"""Vectorizable float64 ``exp`` and the activations built on it (tanh, sigmoid, tanh-GELU, swish).

numba lowers ``math.exp`` to a libm call per element (no SVML here), which
LLVM cannot vectorize: a softmax or a GELU epilogue cost 100-250 cycles per
element, many times the GEMM feeding it. ``exp64`` is plain arithmetic that
LLVM vectorizes inside a loop: ``exp(x) = 2^n * e^r`` with ``n = round(x /
ln 2)``, ``|r| <= ln 2 / 2``, ``e^r`` by its degree-11 Taylor polynomial
(relative error below 1e-15) and ``2^n`` built from its bits. Inputs are
clamped to [-708, 709] for the arithmetic; beyond, the result is 0 or
inf; NaN passes through.
"""

from __future__ import annotations

import logging
import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from keydnn.backends.numba_cpu.codegen.codes import TANH_COEFFS
from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS as JIT_OPTIONS
from keydnn.backends.numba_cpu.kernels.simd import Vec, load_at, store_at, vload

__all__ = ["exp64", "tanh64", "sigmoid64", "gelu_tanh64", "exp32", "tanh32", "tanh_rational", "TANH_COEFFS", "sigmoid32", "gelu_tanh32", "row_max", "softmax_row", "activate_inplace"]

logger = logging.getLogger(__name__)

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split so that n * _LN2_HI is exact for |n| < 2^11
_LN2_LO = 1.9082149292705877e-10
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
#: Lanes of the vectors ``row_max`` uses (the target's float32 vector; LLVM splits wider ones).
_LANES = dw_lanes()


@intrinsic
def _pow2(typingctx, n):
    """2.0 ** n for an int64 n in [-1022, 1023], from the bits (vectorizes, unlike ldexp)."""
    if not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = builder.add(args[0], ir.Constant(ir.IntType(64), 1023))
        v = builder.shl(v, ir.Constant(ir.IntType(64), 52))
        return builder.bitcast(v, ir.DoubleType())

    return types.float64(n), codegen


@numba.njit(**JIT_OPTIONS)
def exp64(x):
    """e ** x in float64 (see the module docstring)."""
    c = min(max(x, -708.0), 709.0)
    t = np.floor(c * _LOG2E + 0.5)
    r = (c - t * _LN2_HI) - t * _LN2_LO
    p = 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    e = p * _pow2(numba.int64(t))
    e = math.inf if x > 709.0 else e
    e = 0.0 if x < -708.0 else e
    return e if x == x else x


@intrinsic
def _pow2f(typingctx, n):
    """2.0 ** n as a float32 for an int32 n in [-126, 127], from the bits."""
    if not isinstance(n, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = builder.trunc(args[0], ir.IntType(32)) if args[0].type.width > 32 else args[0]
        v = builder.add(v, ir.Constant(ir.IntType(32), 127))
        v = builder.shl(v, ir.Constant(ir.IntType(32), 23))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(n), codegen


_F = np.float32
_LOG2E_F, _LN2_HI_F, _LN2_LO_F = _F(1.4426950408889634), _F(0.693359375), _F(-2.12194440e-4)
_LO_F, _HI_F, _HALF_F, _ONE_F, _TWO_F = _F(-87.3), _F(88.7), _F(0.5), _F(1.0), _F(2.0)
_P2, _P3, _P4, _P5, _P6 = _F(1 / 2), _F(1 / 6), _F(1 / 24), _F(1 / 120), _F(1 / 720)
_P7 = _F(1 / 5040)
_INF_F, _ZERO_F = _F(np.inf), _F(0.0)
_T3, _T5, _SMALL_F = _F(-1 / 3), _F(2 / 15), _F(0.0625)
_SQ2PI_F, _GC_F = _F(math.sqrt(2.0 / math.pi)), _F(0.044715)


@numba.njit(**JIT_OPTIONS)
def exp32(x):
    """e ** x in float32 arithmetic (16 lanes to a 512-bit vector where exp64 has 8): the same reduction
    with a degree-7 polynomial, about 2 ulp; 0 below -87.3, inf above 88.7, NaN passes through."""
    c = min(max(x, _LO_F), _HI_F)
    t = np.floor(c * _LOG2E_F + _HALF_F)
    r = (c - t * _LN2_HI_F) - t * _LN2_LO_F
    p = _P7
    p = p * r + _P6
    p = p * r + _P5
    p = p * r + _P4
    p = p * r + _P3
    p = p * r + _P2
    p = p * r + _ONE_F
    p = p * r + _ONE_F
    e = p * _pow2f(numba.int32(t))
    e = _INF_F if x > _HI_F else e
    e = _ZERO_F if x < _LO_F else e
    return e if x == x else x


#: Eigen's rational tanh, the one tanh approximation of the float32 helpers: clamp, then x * P(x^2) / Q(x^2)
#: (P: 7 coefficients, highest first; Q: 4), then 1 and 1/2; within a few float32 ulps, in plain arithmetic
#: that LLVM vectorizes. ``tanh32`` uses these as float32 constants; the sequence helpers (``helpers_seq``)
#: read them from the weight blob, in the graph's dtype.
_TCLAMP, _TP6, _TP5, _TP4, _TP3, _TP2, _TP1, _TP0, _TQ3, _TQ2, _TQ1, _TQ0 = (_F(c) for c in TANH_COEFFS[:12])


@numba.njit(**JIT_OPTIONS)
def tanh_rational(x, clamp, p6, p5, p4, p3, p2, p1, p0, q3, q2, q1, q0):
    """tanh(x) by ``TANH_COEFFS`` (passed in, so that the arithmetic stays in the caller's dtype)."""
    x = min(max(x, -clamp), clamp)
    x2 = x * x
    p = x2 * p6 + p5
    p = x2 * p + p4
    p = x2 * p + p3
    p = x2 * p + p2
    p = x2 * p + p1
    p = x2 * p + p0
    q = x2 * q3 + q2
    q = x2 * q + q1
    q = x2 * q + q0
    return x * p / q


@numba.njit(**JIT_OPTIONS)
def tanh32(x):
    """tanh in float32: the rational approximation; NaN passes through."""
    t = tanh_rational(x, _TCLAMP, _TP6, _TP5, _TP4, _TP3, _TP2, _TP1, _TP0, _TQ3, _TQ2, _TQ1, _TQ0)
    return t if x == x else x


@numba.njit(**JIT_OPTIONS)
def sigmoid32(x):
    return _ONE_F / (_ONE_F + exp32(-x))


@numba.njit(**JIT_OPTIONS)
def gelu_tanh32(x):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), tanh by the rational approximation."""
    u = _SQ2PI_F * (x + _GC_F * x * x * x)
    th = tanh_rational(u, _TCLAMP, _TP6, _TP5, _TP4, _TP3, _TP2, _TP1, _TP0, _TQ3, _TQ2, _TQ1, _TQ0)
    g = _HALF_F * x * (_ONE_F + th)
    return g if x == x else x


@numba.njit(**JIT_OPTIONS)
def tanh64(x):
    """tanh through exp64 of -2|x| (no cancellation for large |x|; absolute error ~1e-16 near 0)."""
    a = abs(x)
    e = exp64(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    t = -t if x < 0.0 else t
    return t if x == x else x


@numba.njit(**JIT_OPTIONS)
def sigmoid64(x):
    return 1.0 / (1.0 + exp64(-x))


@numba.njit(**JIT_OPTIONS)
def gelu_tanh64(x):
    return 0.5 * x * (1.0 + tanh64(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@intrinsic
def _vmax(typingctx, a, b):
    """Lane-wise ``a if a > b else b`` (LLVM leaves a scalar max reduction unvectorized)."""
    if not (isinstance(a, Vec) and a == b):
        return None

    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[0], args[1])

    return a(a, b), codegen


@intrinsic
def _vhmax(typingctx, a):
    """The largest lane of ``a``."""
    if not isinstance(a, Vec):
        return None

    def codegen(context, builder, sig, args):
        vty = args[0].type
        suffix = "f32" if isinstance(vty.element, ir.FloatType) else "f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty.element, [vty]),
                                            f"llvm.vector.reduce.fmax.v{vty.count}{suffix}")
        return builder.call(fn, [args[0]])

    return a.dtype(a), codegen


@numba.njit(**JIT_OPTIONS)
def row_max(x, o, length):
    """max of x[o:o + length] as float64, in vectors. A NaN in the row may be missed here: callers subtract
    the max from every element, so a NaN still reaches every output of the row (as in the reference)."""
    m = -math.inf
    k = 0
    if length >= _LANES:
        acc = vload(x, o, _LANES)
        k = _LANES
        while k + _LANES <= length:
            acc = _vmax(acc, vload(x, o + k, _LANES))
            k += _LANES
        m = numba.float64(_vhmax(acc))
    while k < length:
        v = numba.float64(load_at(x, o + k))
        m = v if v > m else m
        k += 1
    return m


@numba.njit(**{**JIT_OPTIONS, "fastmath": {"reassoc"}})
def softmax_row(x, o, y, d, length):
    """Softmax of the contiguous row x[o:o + length] into y[d:d + length] (y may be x). The exponentials are
    computed on y alone (x copied first where it is another row): loops reading one array and writing
    another that might overlap it are left scalar by LLVM."""
    m = row_max(x, o, length)
    if x.ctypes.data + o * x.itemsize != y.ctypes.data + d * y.itemsize:
        for k in range(length):
            store_at(y, d + k, load_at(x, o + k))
    if y.itemsize == 4:  # float32 data: float32 arithmetic, twice the lanes (a float64 graph keeps float64)
        m32 = numba.float32(m)
        s32 = numba.float32(0.0)
        for k in range(length):
            e32 = exp32(numba.float32(load_at(y, d + k)) - m32)
            store_at(y, d + k, e32)
            s32 += e32
        inv32 = _ONE_F / s32
        for k in range(length):
            store_at(y, d + k, numba.float32(load_at(y, d + k)) * inv32)
        return
    s = 0.0
    for k in range(length):
        e = exp64(numba.float64(load_at(y, d + k)) - m)
        store_at(y, d + k, e)
        s += e
    inv = 1.0 / s
    for k in range(length):
        store_at(y, d + k, numba.float64(load_at(y, d + k)) * inv)


def _span(f, cast):
    """A loop applying ``f`` in place over y[o:o + n], in its own function (inside one function with the
    other loops, LLVM left it scalar)."""

    @numba.njit(**JIT_OPTIONS)
    def run(y, o, n):
        for i in range(n):
            store_at(y, o + i, f(cast(load_at(y, o + i))))

    return run


@numba.njit(**JIT_OPTIONS)
def _swish32(v):
    return v * sigmoid32(v)


@numba.njit(**JIT_OPTIONS)
def _swish64(v):
    return v * sigmoid64(v)


_SPANS32 = tuple(_span(f, numba.float32) for f in (tanh32, sigmoid32, gelu_tanh32, _swish32))
_SPANS64 = tuple(_span(f, numba.float64) for f in (tanh64, sigmoid64, gelu_tanh64, _swish64))
_T0, _T1, _T2, _T3F = _SPANS32
_D0, _D1, _D2, _D3 = _SPANS64


@numba.njit(**JIT_OPTIONS)
def activate_inplace(y, o, n, which):
    """y[o:o + n] = f(y[o:o + n]) for f = tanh (0), sigmoid (1), tanh-GELU (2), swish (3): float32 arithmetic
    for float32 data, float64 otherwise."""
    if y.itemsize == 4:
        if which == 0:
            _T0(y, o, n)
        elif which == 1:
            _T1(y, o, n)
        elif which == 2:
            _T2(y, o, n)
        else:
            _T3F(y, o, n)
    elif which == 0:
        _D0(y, o, n)
    elif which == 1:
        _D1(y, o, n)
    elif which == 2:
        _D2(y, o, n)
    else:
        _D3(y, o, n)
