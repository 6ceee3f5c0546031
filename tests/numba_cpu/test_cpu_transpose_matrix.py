"""Rotations of the sample axes (NHWC <-> NCHW and the like) run as a matrix transpose (``transpose_matrix``):
every branch of the helper (short result rows, short source rows, tiles) and splits into blocks, checked
against the NumPy reference interpreter; other permutations keep the general gather."""

from __future__ import annotations

import pytest
from cpu_helpers import check, make_graph, node, randn

from keydnn.backends.numba_cpu import compile_graph
from keydnn.ir.ops import Transpose


@pytest.mark.parametrize("shape,perm", [
    ((64, 64, 3), (0, 3, 1, 2)),  # an image's NHWC -> NCHW (3 long result rows)
    ((2, 64, 64), (0, 2, 3, 1)),  # a 2-channel result back to NHWC (2 long source rows)
    ((40, 9, 70), (0, 3, 1, 2)),  # both sides long: tiles, partial at both edges
    ((70, 5, 6), (0, 2, 3, 1)),
    ((3, 4, 5, 6), (0, 3, 4, 1, 2)),  # rank 4 samples: any rotation point
    ((3, 4, 5, 6), (0, 2, 3, 4, 1)),
    ((17, 33), (0, 2, 1)),
])
def test_rotations_run_as_matrix_transpose(shape, perm) -> None:
    g = make_graph([node("t", Transpose(perm=perm), "x")], (1,) + shape, layout="ANY")
    exe = compile_graph(g, mode="codegen")
    assert any(" as " in s for s in next(iter(exe._variants.values())).program.stages)
    for n in (1, 3):
        check(g, randn(n, *shape, seed=n), exe=exe)


def test_other_permutations_keep_the_gather() -> None:
    g = make_graph([node("t", Transpose(perm=(0, 2, 1, 3)), "x")], (1, 4, 5, 6), layout="ANY")
    exe = compile_graph(g, mode="codegen")
    assert not any(" as " in s for s in next(iter(exe._variants.values())).program.stages)
    check(g, randn(2, 4, 5, 6, seed=1), exe=exe)
