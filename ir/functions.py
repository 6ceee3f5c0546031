"""The one table of elementwise scalar functions: every activation and every ``unary`` function, as a formula.

Each row is written once, as a Python expression in ``x`` (the element) and
up to four float parameters ``a, b, c, d``. ``keydnn.backends.function_source``
renders the table into the three places that evaluate it, so the reference
interpreter, the CPU kernels and the CUDA kernels compute the same formula
term by term:

- ``keydnn/ir/reference_functions.py`` (NumPy, whole arrays, float64),
- ``backends/numba_cpu/kernels/functions.py`` (one numba scalar function, float64,
  dispatched on the row's code at run time),
- ``backends/numba_cuda/functions.py`` (one device function per row and
  dtype, its literals in that dtype, so float32 kernels never promote).

The formula language: arithmetic, comparisons, ``where(cond, p, q)``
(``p if cond else q``), ``max``/``min`` of two values, and ``exp, log,
log1p, expm1, tanh, erf, sqrt, sin, cos, floor, ceil, rint, abs``. Division,
``sqrt``, ``log`` and ``log1p`` give IEEE results (inf, nan) outside their
domain on every target instead of raising.

Adding an activation: add a row here (family ``activation`` for the
``activation`` op, which conv and dense can fuse as an epilogue; ``unary``
for the ``unary`` op), run ``python -m keydnn.backends.function_source``
(a test fails until you do) and map the Keras name in the converter. Codes
are row positions: append rows, never reorder them (compile caches key on
generated text, not on codes, but the order keeps diffs readable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ScalarFunction", "FUNCTIONS", "FUNCTION_CODES", "ACTIVATION_FUNCTIONS", "UNARY_FUNCTIONS",
           "ACTIVATION_NAMES", "UNARY_NAMES", "function_code", "BinaryFunction", "BINARY", "BINARY_CODES",
           "BINARY_NAMES"]


@dataclass(frozen=True)
class ScalarFunction:
    """One elementwise function: its name, the op family that exposes it, its formula, what it means."""

    name: str
    family: Literal["activation", "unary", "internal"]
    formula: str
    meaning: str = ""

    @property
    def description(self) -> str:
        return self.meaning or self.formula


_SELU = "1.0507009873554805 * where(x > 0, x, 1.6732632423543772 * expm1(min(x, 0)))"
_SOFTPLUS = "max(x, 0) + log1p(exp(-abs(x)))"

#: Every scalar function, in code order. ``internal`` rows are the relu forms the epilogue encoding uses
#: (the ``relu`` op has its own attributes: threshold ``a``, max_value ``b``, has-max flag ``c``, slope ``d``).
FUNCTIONS: tuple[ScalarFunction, ...] = (
    ScalarFunction("linear", "activation", "x"),
    ScalarFunction("relu", "internal", "where(x > 0, x, 0)", "max(x, 0)"),
    ScalarFunction("relu_general", "internal",
                   "where(c != 0, min(max(where(x > a, x, 0), 0), b), where(x > a, x, 0))"
                   " - where(d != 0, d * max(a - x, 0), 0)",
                   "Keras relu: threshold a, max_value b when c != 0, negative slope d"),
    ScalarFunction("sigmoid", "activation", "1 / (1 + exp(-x))"),
    ScalarFunction("tanh", "activation", "tanh(x)"),
    ScalarFunction("softplus", "activation", _SOFTPLUS, "log(1 + exp(x))"),
    ScalarFunction("softsign", "activation", "x / (1 + abs(x))"),
    ScalarFunction("elu", "activation", "where(x > 0, x, a * expm1(min(x, 0)))", "x if x > 0 else alpha * (exp(x) - 1)"),
    ScalarFunction("selu", "activation", _SELU, "scale * elu(x, alpha) with the SELU constants"),
    ScalarFunction("gelu", "activation", "0.5 * x * (1 + erf(x * 0.7071067811865476))", "x * Phi(x) (exact, erf)"),
    ScalarFunction("gelu_tanh", "activation",
                   "0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))",
                   "tanh approximation of gelu"),
    ScalarFunction("swish", "activation", "x / (1 + exp(-x))", "x * sigmoid(x)"),
    ScalarFunction("exponential", "activation", "exp(x)"),
    ScalarFunction("hard_sigmoid", "activation", "min(max(x / 6 + 0.5, 0), 1)", "clip(x / 6 + 0.5, 0, 1) (Keras 3)"),
    ScalarFunction("hard_sigmoid_k2", "activation", "min(max(0.2 * x + 0.5, 0), 1)",
                   "clip(0.2 * x + 0.5, 0, 1) (Keras 2)"),
    # -- the unary op: plain math and Keras's newer activations (parameters a, b) --
    ScalarFunction("neg", "unary", "-x"),
    ScalarFunction("abs", "unary", "abs(x)", "|x|"),
    ScalarFunction("sqrt", "unary", "sqrt(x)"),
    ScalarFunction("rsqrt", "unary", "1 / sqrt(x)"),
    ScalarFunction("square", "unary", "x * x"),
    ScalarFunction("exp", "unary", "exp(x)"),
    ScalarFunction("log", "unary", "log(x)"),
    ScalarFunction("reciprocal", "unary", "1 / x"),
    ScalarFunction("sign", "unary", "where(x > 0, 1, where(x < 0, -1, x))", "sign(x)"),
    ScalarFunction("floor", "unary", "floor(x)"),
    ScalarFunction("ceil", "unary", "ceil(x)"),
    ScalarFunction("round", "unary", "rint(x)", "round half to even"),
    ScalarFunction("sin", "unary", "sin(x)"),
    ScalarFunction("cos", "unary", "cos(x)"),
    ScalarFunction("erf", "unary", "erf(x)"),
    ScalarFunction("log1p", "unary", "log1p(x)", "log(1 + x)"),
    ScalarFunction("expm1", "unary", "expm1(x)", "exp(x) - 1"),
    ScalarFunction("clip", "unary", "min(max(x, a), b)"),
    ScalarFunction("hard_silu", "unary", "x * min(max(x + 3, 0), 6) / 6", "x * relu6(x + 3) / 6"),
    ScalarFunction("mish", "unary", f"x * tanh({_SOFTPLUS})", "x * tanh(softplus(x))"),
    ScalarFunction("log_sigmoid", "unary", "-(max(-x, 0) + log1p(exp(-abs(x))))", "-softplus(-x)"),
    ScalarFunction("sparse_plus", "unary", "where(x <= -1, 0, where(x >= 1, x, (x + 1) * (x + 1) / 4))",
                   "0 if x <= -1, x if x >= 1, (x + 1)^2 / 4 between"),
    ScalarFunction("squareplus", "unary", "(x + sqrt(x * x + a)) / 2"),
    ScalarFunction("celu", "unary", "max(x, 0) + a * min(expm1(x / a), 0)"),
    ScalarFunction("hard_tanh", "unary", "min(max(x, -1), 1)", "clip(x, -1, 1)"),
    ScalarFunction("soft_shrink", "unary", "where(x > a, x - a, where(x < -a, x + a, 0))",
                   "x - a if x > a, x + a if x < -a, else 0"),
    ScalarFunction("hard_shrink", "unary", "where(abs(x) > a, x, 0)", "x if |x| > a else 0"),
    ScalarFunction("tanh_shrink", "unary", "x - tanh(x)"),
    ScalarFunction("threshold", "unary", "where(x > a, x, b)", "x if x > a else b"),
    ScalarFunction("sparse_sigmoid", "unary", "min(max((x + 1) / 2, 0), 1)", "clip((x + 1) / 2, 0, 1)"),
)

#: name -> code (the row's position), what kernels branch on.
FUNCTION_CODES: dict[str, int] = {f.name: i for i, f in enumerate(FUNCTIONS)}
#: Functions of the ``activation`` op (fusible into conv/dense as an epilogue), name -> meaning.
ACTIVATION_FUNCTIONS: dict[str, str] = {f.name: f.description for f in FUNCTIONS if f.family == "activation"}
#: Functions of the ``unary`` op, name -> meaning.
UNARY_FUNCTIONS: dict[str, str] = {f.name: f.description for f in FUNCTIONS if f.family == "unary"}
ACTIVATION_NAMES: tuple[str, ...] = tuple(ACTIVATION_FUNCTIONS)
UNARY_NAMES: tuple[str, ...] = tuple(UNARY_FUNCTIONS)


@dataclass(frozen=True)
class BinaryFunction:
    """One function of two elements ``x`` and ``y`` (the ``binary`` op), as a formula in the same language."""

    name: str
    formula: str


#: The ``binary`` op's functions, in code order: NumPy broadcasting semantics, comparisons give 1.0 / 0.0
#: (Keras gives booleans, which a model casts back to float), max/min propagate nan from either side.
BINARY: tuple[BinaryFunction, ...] = (
    BinaryFunction("add", "x + y"),
    BinaryFunction("sub", "x - y"),
    BinaryFunction("mul", "x * y"),
    BinaryFunction("div", "x / y"),
    BinaryFunction("pow", "x ** y"),
    BinaryFunction("max", "where(x != x, x, where(x > y, x, y))"),
    BinaryFunction("min", "where(x != x, x, where(x < y, x, y))"),
    BinaryFunction("greater", "where(x > y, 1, 0)"),
    BinaryFunction("greater_equal", "where(x >= y, 1, 0)"),
    BinaryFunction("less", "where(x < y, 1, 0)"),
    BinaryFunction("less_equal", "where(x <= y, 1, 0)"),
    BinaryFunction("equal", "where(x == y, 1, 0)"),
    BinaryFunction("not_equal", "where(x != y, 1, 0)"),
)
#: binary function name -> code (its position).
BINARY_CODES: dict[str, int] = {f.name: i for i, f in enumerate(BINARY)}
BINARY_NAMES: tuple[str, ...] = tuple(BINARY_CODES)


def function_code(name: str) -> int:
    """The code of function ``name``; KeyError naming the known functions when there is none."""
    try:
        return FUNCTION_CODES[name]
    except KeyError:
        raise KeyError(f"no scalar function {name!r}; known: {', '.join(FUNCTION_CODES)}") from None
