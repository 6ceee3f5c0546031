"""Dense on two-vector weight panels with the depth in L1-sized blocks (``mkn_*``, ``emit_nn.emit_dense``).

Every shape below crosses a boundary of the blocking: depths of one block, of several unequal to the cap,
and of a remainder; column counts of one vector, of an odd number of panels and of a partial vector; row
counts that use the full tile, the 4-row tile and the single-row kernel (and several work items). Checked
against the NumPy reference interpreter, with and without bias, with fused and post-store activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cpu_helpers import TOL, check, make_graph, node, patched, randn

from keydnn.backends.numba_cpu import compile_graph
from keydnn.backends.numba_cpu.codegen import dense_kernel_source, emit_nn
from keydnn.backends.numba_cpu.codegen.target import current_target
from keydnn.ir.ops import Activation, Dense, Relu


def _graph(k: int, m: int, act, bias: bool, seed: int):
    weights = {"w": randn(k, m, seed=seed, scale=k ** -0.5)}
    inputs = ["x", "w"]
    if bias:
        weights["b"] = randn(m, seed=seed + 1)
        inputs.append("b")
    return make_graph([node("fc", Dense(activation=act), *inputs)], (1, k), weights)


@pytest.mark.parametrize("k,m", [(5, 3), (300, 17), (700, 100), (1100, 33)])
@pytest.mark.parametrize("act,bias", [(None, True), (Relu(), True), (Relu(max_value=6.0, negative_slope=0.1), False),
                                      (Activation(function="sigmoid"), True)])
def test_dense_depth_blocks_match_reference(k: int, m: int, act, bias: bool) -> None:
    g = _graph(k, m, act, bias, seed=k + m)
    exe = compile_graph(g, mode="codegen")
    for n in (1, 3, 8, 13, 70):  # single rows, the 4-row tile, full tiles, several row blocks (work items)
        check(g, randn(n, k, seed=n), exe=exe, **TOL)


def test_dense_small_depth_cap_splits_into_several_blocks() -> None:
    """A 64-row cap forces every depth above into blocks (the 1100 above has them only on narrow targets)."""
    with patched(emit_nn, "dense_depth_block", lambda k, _row_bytes: -(-k // -(-k // 64))):
        g = _graph(200, 70, Relu(), True, seed=3)
        exe = compile_graph(g, mode="codegen")
        source = exe.source
        for n in (1, 9, 40):
            check(g, randn(n, 200, seed=n), exe=exe, **TOL)
    assert "depth-blocks=50" in "\n".join(next(iter(exe._variants.values())).program.stages)
    assert source


def test_dense_depth_block_fits_l1() -> None:
    row = 2 * current_target().lanes() * 4
    for k in (10, 256, 784, 4096, 5000):
        kc = emit_nn.dense_depth_block(k, row)
        assert kc * row <= max(current_target().l1_bytes, 32 * row)
        assert -(-k // kc) * kc - k < -(-k // kc)  # equal blocks: the last is short by less than one per block


def test_dense_kernel_file_is_current() -> None:
    assert dense_kernel_source.DENSE_UKERNELS_PATH.read_text() == dense_kernel_source.render_dense_ukernels(), \
        "regenerate with: python -m keydnn.backends.numba_cpu.codegen.dense_kernel_source"
    assert Path(dense_kernel_source.DENSE_UKERNELS_PATH).name == "ukernels_dense.py"


def test_dense_float64_blocks() -> None:
    weights = {"w": randn(600, 40, seed=5, dtype="float64"), "b": randn(40, seed=6, dtype="float64")}
    g = make_graph([node("fc", Dense(activation=Relu()), "x", "w", "b")], (1, 600), weights, dtype="float64")
    exe = compile_graph(g, mode="codegen")
    for n in (1, 11):
        x = np.random.default_rng(n).standard_normal((n, 600))
        check(g, x, exe=exe, rtol=1e-10, atol=1e-10)
