"""Shared by the numba-cuda tests: where they run, and parity checks against the reference and numba-cpu.

numba.cuda picks the simulator or the driver once per process, when it is
first imported, so these tests never switch it themselves: a process with a
GPU runs them on the GPU; ``test_cuda_simulator.py`` runs them all again in
a child process with ``NUMBA_ENABLE_CUDASIM=1`` (so CI without a GPU runs
them, and the rest of the suite keeps a real numba.cuda that finds no
device); elsewhere they skip. (This is deliberately not a conftest.py:
tests/cuda is not a package, as one named ``cuda`` would shadow NVIDIA's
``cuda`` bindings, and a second top-level ``conftest`` module would replace
the one other tests import.)
"""

from __future__ import annotations

import sys
from typing import Callable, Iterator

import numpy as np
import pytest

from keydnn.backends.numba_cuda import device as cuda_device
from keydnn.device import Device
from keydnn.ir import Graph, run_reference

__all__ = [
    "compile_cuda", "assert_parity", "single_op_graph", "ATOL", "skip_without_cuda", "simulator_only", "fast_simulator",
    "seeded",
]

def skip_without_cuda() -> None:
    """First statement after a test module's imports: one skip for the module when this process has
    neither a GPU nor the simulator (test_cuda_simulator.py then runs it in a child process)."""
    if cuda_device.device_count() == 0:
        pytest.skip("no CUDA device in this process; test_cuda_simulator.py runs these tests on the simulator "
                    "(or run them with NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True)

#: For tests that only make sense on the simulator (host memory standing in for device memory).
simulator_only = pytest.mark.skipif(not cuda_device.simulator_enabled(), reason="simulator-only test")


@pytest.fixture(autouse=True)
def fast_simulator() -> Iterator[None]:
    """The simulator runs each CUDA thread as a Python thread and polls them; a short GIL switch
    interval makes its barriers (syncthreads) several times faster. Restored after each test."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def seeded() -> np.random.Generator:
    """The inputs' generator: every test draws the same numbers, whatever ran before it."""
    return np.random.default_rng(0)

ATOL = {"float32": 2e-5, "float64": 1e-10}


def compile_cuda(graph: Graph, index: int = 0):
    from keydnn.backends.numba_cuda import compile_graph

    return compile_graph(graph, Device("cuda", index))


def _cpu_can_run(graph: Graph) -> bool:
    from keydnn.backends.numba_cpu.ops.steps import ops_mode_kinds

    return all(n.op.kind in ops_mode_kinds() for n in graph.nodes)


def assert_parity(graph: Graph, *inputs: np.ndarray, atol: float | None = None, cpu: bool = True,
                  cpu_mode: str | None = None) -> list[np.ndarray]:
    """CUDA == reference (and == numba-cpu where it has every kernel); returns the CUDA outputs.

    ``cpu_mode`` picks numba-cpu's mode ("ops": a one-node generated program per node, compiled once per
    node signature;
    default: whole-graph generated code, compiled once per graph)."""
    dtype = graph.inputs[0].type.dtype
    atol = ATOL[dtype] if atol is None else atol
    feed = {v.name: x for v, x in zip(graph.inputs, inputs)}
    want = run_reference(graph, feed)
    got = compile_cuda(graph)(*inputs)
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert isinstance(g, np.ndarray), type(g)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        np.testing.assert_allclose(g, w, atol=atol, rtol=atol)
    if cpu and _cpu_can_run(graph):
        from keydnn.backends.numba_cpu import compile_graph as compile_cpu

        for c, g in zip(compile_cpu(graph, mode=cpu_mode)(*inputs), got):
            np.testing.assert_allclose(g, c, atol=atol, rtol=atol)
    return got


def single_op_graph(build: Callable, shape: tuple = ("N", 3, 6, 6), *, dtype: str = "float32",
                    layout: str = "NCHW", seed: int = 0) -> Graph:
    """``build(builder, x) -> value``: one small graph whose output is that value."""
    from passes.builders import GraphBuilder

    b = GraphBuilder("op", dtype=dtype, seed=seed)
    x = b.input("x", shape, layout)
    return b.build(build(b, x))
