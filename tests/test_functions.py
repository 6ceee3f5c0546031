"""The one table of elementwise functions (``keydnn.ir.functions``) and the three modules rendered from it.

Checks that the rendered modules are current, that the CPU and CUDA (simulator)
renderings compute what the NumPy reference computes at every row, including
outside a function's domain (inf/nan, never an exception), and that the op
literals and kernel codes are derived from the table rather than spelled again.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from keydnn.backends import function_source
from keydnn.ir.functions import ACTIVATION_NAMES, FUNCTION_CODES, FUNCTIONS, UNARY_NAMES
from keydnn.ir.reference_functions import apply_numpy

#: Points that cover each branch: negatives, the kinks at +-1 and 0, large magnitudes, and the domain edges.
POINTS = np.array([-40.0, -6.0, -3.0, -1.5, -1.0, -0.7, -0.25, -0.0, 0.0, 0.25, 0.5, 0.7, 1.0, 1.5, 3.0, 6.0, 40.0])
PARAMS = (0.7, 1.3, 1.0, 0.2)


def test_rendered_modules_are_current():
    assert function_source.main(["--check"]) == 0, "run: python -m keydnn.backends.function_source"


def test_generator_check_is_a_command():
    out = subprocess.run([sys.executable, "-m", "keydnn.backends.function_source", "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_codes_are_row_positions_and_names_unique():
    names = [f.name for f in FUNCTIONS]
    assert len(names) == len(set(names))
    assert [FUNCTION_CODES[n] for n in names] == list(range(len(names)))
    assert set(ACTIVATION_NAMES).isdisjoint(UNARY_NAMES)


def test_op_literals_come_from_the_table():
    from keydnn.ir.ops import Activation, Unary
    from keydnn.ir.ops.recurrent import CELL_ACTIVATIONS

    assert Activation.model_fields["function"].annotation.__args__ == ACTIVATION_NAMES
    assert Unary.model_fields["function"].annotation.__args__ == UNARY_NAMES
    assert set(CELL_ACTIVATIONS) == {"relu", *ACTIVATION_NAMES}


def test_epilogue_codes_come_from_the_table():
    from keydnn.backends import epilogues

    assert epilogues.ACTIVATION_CODES == {n: FUNCTION_CODES[n] for n in ACTIVATION_NAMES}
    assert (epilogues.LINEAR, epilogues.RELU0, epilogues.RELU) == (
        FUNCTION_CODES["linear"], FUNCTION_CODES["relu"], FUNCTION_CODES["relu_general"])


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.name)
def test_cpu_rendering_matches_reference(fn):
    from keydnn.backends.numba_cpu.kernels.functions import apply_function

    want = apply_numpy(fn.name, POINTS, *PARAMS)
    got = np.array([apply_function(float(v), FUNCTION_CODES[fn.name], *PARAMS) for v in POINTS])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-300, equal_nan=True)


def test_domain_edges_give_ieee_values_not_errors():
    from keydnn.backends.numba_cpu.kernels.functions import apply_function

    for name, x, want in (("sqrt", -1.0, math.nan), ("log", 0.0, -math.inf), ("log", -1.0, math.nan),
                          ("log1p", -1.0, -math.inf), ("reciprocal", 0.0, math.inf),
                          ("reciprocal", -0.0, -math.inf), ("rsqrt", 0.0, math.inf)):
        ref = float(apply_numpy(name, np.array([x]))[0])
        cpu = apply_function(x, FUNCTION_CODES[name], 0.0, 0.0, 0.0, 0.0)
        for got in (ref, cpu):
            assert (math.isnan(got) and math.isnan(want)) or got == want, (name, x, got)


def test_relu_general_matches_keras_relu_semantics():
    from keydnn.backends.numba_cpu.kernels.functions import apply_function

    x = np.linspace(-4, 8, 25)
    threshold, max_value, slope = 0.5, 6.0, 0.1
    want = np.where(x > threshold, x, 0.0)
    want = np.minimum(np.maximum(want, 0.0), max_value) - slope * np.maximum(threshold - x, 0.0)
    got = np.array([apply_function(v, FUNCTION_CODES["relu_general"], threshold, max_value, 1.0, slope) for v in x])
    np.testing.assert_allclose(got, want)
    np.testing.assert_allclose(apply_numpy("relu_general", x, threshold, max_value, 1.0, slope), want)


CUDA_SIM = """
import numpy as np
from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.functions import make_function
from keydnn.ir.functions import FUNCTIONS, FUNCTION_CODES
from keydnn.ir.reference_functions import apply_numpy
pts = np.array({points!r})
params = {params!r}
bad = []
for fn in FUNCTIONS:
    for dtype in ("float32", "float64"):
        f = make_function(dtype, FUNCTION_CODES[fn.name])
        t = np.dtype(dtype).type

        @cuda.jit
        def k(x, out, a, b, c, d):
            i = cuda.grid(1)
            if i < x.size:
                out[i] = f(x[i], a, b, c, d)

        x = pts.astype(dtype)
        out = np.zeros_like(x)
        with np.errstate(all="ignore"):
            k[1, 32](x, out, *(t(p) for p in params))
        want = apply_numpy(fn.name, x.astype(np.float64), *params)
        tol = 1e-5 if dtype == "float32" else 1e-12
        if not np.allclose(out, want, rtol=tol, atol=tol, equal_nan=True):
            bad.append((fn.name, dtype, out.tolist(), want.tolist()))
print("BAD", bad)
assert not bad
"""


def test_cuda_rendering_matches_reference_on_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    code = CUDA_SIM.format(points=POINTS.tolist(), params=PARAMS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


BINARY_POINTS = [(x, y) for x in (-2.0, -0.0, 0.0, 0.5, 3.0, math.inf, math.nan) for y in (-2.0, 0.0, 0.5, 3.0, math.nan)]


def test_binary_renderings_match_reference():
    from keydnn.backends.numba_cpu.kernels.functions import apply_binary
    from keydnn.ir.functions import BINARY, BINARY_CODES
    from keydnn.ir.reference_functions import apply_binary_numpy

    xs = np.array([p[0] for p in BINARY_POINTS])
    ys = np.array([p[1] for p in BINARY_POINTS])
    for fn in BINARY:
        want = apply_binary_numpy(fn.name, xs, ys)
        got = np.array([apply_binary(x, y, BINARY_CODES[fn.name]) for x, y in BINARY_POINTS])
        np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True, err_msg=fn.name)
    # NumPy's own semantics are the contract: nan propagates through max/min, x / 0 is signed inf.
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(apply_binary_numpy("max", xs, ys), np.maximum(xs, ys))
        np.testing.assert_array_equal(apply_binary_numpy("min", xs, ys), np.minimum(xs, ys))
        np.testing.assert_array_equal(apply_binary_numpy("div", xs, ys), xs / ys)
        np.testing.assert_array_equal(apply_binary_numpy("greater", xs, ys), (xs > ys).astype(float))


CUDA_BINARY_SIM = """
import numpy as np
from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.functions import make_binary
from keydnn.ir.functions import BINARY, BINARY_CODES
from keydnn.ir.reference_functions import apply_binary_numpy
nan, inf = float("nan"), float("inf")
pts = {points!r}
bad = []
for fn in BINARY:
    f = make_binary("float64", BINARY_CODES[fn.name])

    @cuda.jit
    def k(x, y, out):
        i = cuda.grid(1)
        if i < x.size:
            out[i] = f(x[i], y[i])

    x = np.array([p[0] for p in pts]); y = np.array([p[1] for p in pts]); out = np.zeros_like(x)
    with np.errstate(all="ignore"):
        k[1, 64](x, y, out)
    want = apply_binary_numpy(fn.name, x, y)
    if not np.allclose(out, want, rtol=1e-12, equal_nan=True):
        bad.append((fn.name, out.tolist(), want.tolist()))
print("BAD", bad)
assert not bad
"""


def test_cuda_binary_matches_reference_on_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    out = subprocess.run([sys.executable, "-c", CUDA_BINARY_SIM.format(points=BINARY_POINTS)],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
