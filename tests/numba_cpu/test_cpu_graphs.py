"""numba-cpu whole graphs (buffers, dtypes, threads) and the errors a bad graph gets."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from cpu_helpers import (
    TOL,
    check,
    make_graph,
    node,
    randn,
    seed_cnn,
)

from keydnn.backends.numba_cpu import KERNELS, compile_graph
from keydnn.errors import BackendError
from keydnn.ir import OP_CLASSES, run_reference
from keydnn.ir.ops import (
    Conv2d,
    Flatten,
    MaxPool2d,
    Opaque,
    Relu,
    Softmax,
)

# -- whole graphs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 5])
def test_seed_cnn(n: int) -> None:
    g = seed_cnn()
    exe = compile_graph(g)
    check(g, randn(n, 1, 28, 28, seed=n), exe=exe)
    check(g, randn(n, 1, 28, 28, seed=n + 10), exe=exe)  # buffers reused across calls


def test_float64_graph_is_computed_in_float64() -> None:
    g = seed_cnn("float64")
    out = check(g, randn(3, 1, 28, 28, dtype="float64"), rtol=1e-10, atol=1e-12)
    assert out[0].dtype == np.float64


def test_outputs_are_fresh_and_intermediates_can_be_outputs() -> None:
    weights = {"w": randn(4, 2, 3, 3, seed=1, scale=0.3)}
    nodes = [
        node("conv", Conv2d(pads=(1, 1, 1, 1)), "x", "w"),
        node("relu", Relu(), "conv"),
        node("flat", Flatten(), "relu"),
        node("sm", Softmax(), "flat"),
    ]
    g = make_graph(nodes, (1, 2, 5, 5), weights, outputs=("sm", "relu", "flat", "sm", "x"))
    exe = compile_graph(g)
    x = randn(2, 2, 5, 5)
    first = check(g, x, exe=exe)
    kept = [a.copy() for a in first]
    for a in first:
        a[...] = 123.0  # the caller owns what it got: scribbling must not leak into later calls
    second = check(g, x, exe=exe)
    for k, s in zip(kept, second):
        np.testing.assert_array_equal(k, s)
    assert len({id(a) for a in second}) == len(second)
    np.testing.assert_array_equal(x, randn(2, 2, 5, 5))  # the input is never written


def test_memory_plan_reuses_buffers_along_a_chain() -> None:
    weights = {f"w{i}": randn(4, 4, 3, 3, seed=i, scale=0.2) for i in range(6)}
    nodes, prev = [], "x"
    for i in range(6):
        nodes += [node(f"conv{i}", Conv2d(pads=(1, 1, 1, 1)), prev, f"w{i}"), node(f"act{i}", Relu(), f"conv{i}")]
        prev = f"act{i}"
    g = make_graph(nodes, (1, 4, 6, 6), weights)
    exe = compile_graph(g, mode="ops")
    check(g, randn(3, 4, 6, 6), exe=exe)
    layout = exe._layout(((3, 4, 6, 6),))
    assert len(layout.arena) == 2  # ping-pong: every relu runs in place, convs alternate two buffers
    assert [p.kind for p in layout.placements][-2:] == ["fresh", "fresh"]  # the output's storage is per call


def test_read_only_and_non_contiguous_inputs() -> None:
    g = seed_cnn()
    exe = compile_graph(g)
    x = randn(2, 1, 28, 28)
    x.flags.writeable = False
    check(g, x, exe=exe)
    wide = randn(2, 1, 28, 56)
    check(g, wide[..., ::2], exe=exe)


def test_concurrent_calls_from_8_threads() -> None:
    g = seed_cnn()
    exe = compile_graph(g)
    # batch 16 is big enough for the parallel kernels, 1 and 3 run on the calling thread
    inputs = [randn((1, 3, 16)[i % 3], 1, 28, 28, seed=100 + i) for i in range(8)]
    expected = [run_reference(g, x)[0] for x in inputs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(25):
                np.testing.assert_allclose(exe(inputs[i])[0], expected[i], **TOL)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


# -- errors -------------------------------------------------------------------------------------

def test_kernel_table_covers_every_op_kind() -> None:
    """Every op of the IR (but the placeholder that never runs) runs in numba-cpu's per-op mode: generated
    code, a view, or one of the declared per-op-only kernels (and nothing else has a per-op kernel)."""
    from keydnn.backends.numba_cpu.modes import PER_OP_ONLY
    from keydnn.backends.numba_cpu.ops.steps import ops_mode_kinds

    assert ops_mode_kinds() == set(OP_CLASSES) - {"opaque"}
    assert set(KERNELS) <= PER_OP_ONLY


def test_opaque_node_is_rejected_by_name() -> None:
    nodes = [
        node("mystery", Opaque(keras_class="Lambda", reason="arbitrary Python", output_shape=("N", 3, 4, 4)), "x"),
        node("relu", Relu(), "mystery"),
    ]
    g = make_graph(nodes, (1, 3, 4, 4))
    with pytest.raises(BackendError, match=r"mystery.*Lambda"):
        compile_graph(g)


def test_nhwc_conv_asks_for_canonicalize_layout() -> None:
    weights = {"w": randn(4, 3, 3, 3)}
    g = make_graph([node("conv_nhwc", Conv2d(layout="NHWC"), "x", "w")], (1, 8, 8, 3), weights, layout="NHWC")
    with pytest.raises(BackendError, match=r"conv_nhwc.*canonicalize-layout"):
        compile_graph(g)


def test_nhwc_pool_asks_for_canonicalize_layout() -> None:
    g = make_graph([node("pool_nhwc", MaxPool2d(kernel=(2, 2), strides=(2, 2), layout="NHWC"), "x")],
                   (1, 8, 8, 3), layout="NHWC")
    with pytest.raises(BackendError, match=r"pool_nhwc.*canonicalize-layout"):
        compile_graph(g)


@pytest.mark.parametrize("mode", ["ops", "codegen"])
def test_op_without_kernel_is_rejected_by_name(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    from keydnn.backends.numba_cpu.runtime.executable import EMITTERS

    monkeypatch.delitem(EMITTERS, "softmax")  # codegen falls back to the per-op mode, which runs emitters too
    g = make_graph([node("probabilities", Softmax(), "x")], (1, 4), layout="NC")
    with pytest.raises(BackendError, match=r"probabilities.*softmax"):
        compile_graph(g, mode=mode)


def test_wrong_input_shape_is_a_value_error() -> None:
    exe = compile_graph(seed_cnn())
    with pytest.raises(ValueError):
        exe(randn(1, 2, 28, 28))
