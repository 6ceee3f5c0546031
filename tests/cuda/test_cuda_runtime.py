"""The numba-cuda executable as users meet it: device arrays, buffers per batch, threads, errors, artifacts."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from numba import cuda  # a kernel's global ``cuda``: the simulator swaps it for its fake module
from cuda_helpers import (  # noqa: F401  (fast_simulator: autouse fixture)
    compile_cuda, fast_simulator, seeded, simulator_only, single_op_graph, skip_without_cuda,
)

import keydnn
from keydnn.backends.numba_cuda import device as cuda_device
from keydnn.backends.numba_cuda import executor
from keydnn.errors import BackendError
from keydnn.ir import Graph, run_reference
from keydnn.ir.ops import Conv2d, GlobalAvgPool2d, Opaque, Relu, Softmax

skip_without_cuda()


@pytest.fixture
def rng() -> np.random.Generator:
    return seeded()


def _model(b, x):
    h = b.conv(x, 4, 3, padding="same", layout="NCHW", activation=Relu())
    h = b.add(GlobalAvgPool2d(), h)
    return b.add(Softmax(), b.dense(h, 5))


@pytest.fixture
def graph() -> Graph:
    return single_op_graph(_model)


class ForeignDeviceArray:
    """Stands in for a CuPy array / PyTorch CUDA tensor: only ``__cuda_array_interface__``.

    Under the simulator a device pointer is a host pointer, so a NumPy array's
    memory is a faithful stand-in for device memory.
    """

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.__cuda_array_interface__ = {
            "shape": array.shape, "typestr": array.dtype.str, "data": (array.ctypes.data, False),
            "strides": None, "version": 3, "stream": None,
        }


def test_device_array_in_device_array_out(graph, rng):
    from numba import cuda

    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    exe = compile_cuda(graph)
    first = exe(cuda.to_device(x))[0]
    assert cuda_device.is_device_array(first) and not isinstance(first, np.ndarray)
    assert tuple(first.shape) == (2, 5)
    want = run_reference(graph, x)[0]
    np.testing.assert_allclose(first.copy_to_host(), want, atol=2e-5)
    second = exe(cuda.to_device(-x))[0]  # a later call must not overwrite what the caller holds
    np.testing.assert_allclose(first.copy_to_host(), want, atol=2e-5)
    np.testing.assert_allclose(second.copy_to_host(), run_reference(graph, -x)[0], atol=2e-5)


@simulator_only
def test_foreign_cuda_array_interface_through_sequential(graph, rng):
    x = rng.normal(size=(3, 3, 6, 6)).astype(np.float32)
    model = keydnn.Sequential(graph, device="cuda")
    y = model(ForeignDeviceArray(x))
    assert cuda_device.is_device_array(y)
    np.testing.assert_allclose(y.copy_to_host(), run_reference(graph, x)[0], atol=2e-5)
    np.testing.assert_allclose(model(x), run_reference(graph, x)[0], atol=2e-5)  # NumPy in, NumPy out


def test_output_that_views_an_input_is_copied_for_device_callers(rng):
    from numba import cuda

    from keydnn.ir.ops import Flatten

    graph = single_op_graph(lambda b, x: b.add(Flatten(), x))
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    d = cuda.to_device(x)
    y = compile_cuda(graph)(d)[0]
    d.copy_to_device(np.zeros_like(x))
    np.testing.assert_array_equal(y.copy_to_host(), x.reshape(2, -1))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 6, 6), np.float64), "float64 device array"),
    (np.zeros((2, 3, 5, 6), np.float32), "shape"),
])
def test_device_input_checks(graph, bad, message):
    from numba import cuda

    with pytest.raises(ValueError, match=message):
        compile_cuda(graph)(cuda.to_device(bad))


def test_buffers_cached_per_batch_size(graph, rng, monkeypatch):
    monkeypatch.setattr(executor, "MAX_CACHED_SHAPES", 2)
    exe = compile_cuda(graph)
    for batch in (1, 2, 1, 3):
        x = rng.normal(size=(batch, 3, 6, 6)).astype(np.float32)
        np.testing.assert_allclose(exe(x)[0], run_reference(graph, x)[0], atol=2e-5)
    assert list(exe._states) == [((1, 3, 6, 6),), ((3, 3, 6, 6),)]


def test_concurrent_calls_are_safe(graph, rng):
    exe = compile_cuda(graph)
    xs = [rng.normal(size=(1 + i % 2, 3, 6, 6)).astype(np.float32) for i in range(4)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = exe(xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(xs):
        np.testing.assert_allclose(results[i], run_reference(graph, x)[0], atol=2e-5)


def test_no_device_error(graph, monkeypatch):
    monkeypatch.setattr(cuda_device, "device_count", lambda: 0)
    with pytest.raises(BackendError, match=r"cuda requested but no CUDA device was found; use device='cpu'"):
        keydnn.Sequential(graph, device="cuda")


def test_index_out_of_range_error(graph):
    count = cuda_device.device_count()  # 1 on the simulator
    with pytest.raises(BackendError, match=rf"cuda:{count + 2} requested but only {count} CUDA device\(s\) found"):
        keydnn.Sequential(graph, device=f"cuda:{count + 2}")


def test_no_driver_counts_as_no_device(monkeypatch):
    """Outside the simulator, a missing driver makes is_available() False: zero devices, not a crash."""
    monkeypatch.setattr(cuda_device, "simulator_enabled", lambda: False)
    monkeypatch.setattr(cuda_device.cuda, "is_available", lambda: False, raising=False)
    assert cuda_device.device_count() == 0


def test_unsupported_nodes_are_all_reported(rng):
    def build(b, x):
        h = b.add(Opaque(keras_class="Lambda", reason="arbitrary Python", output_shape=("N", 3, 6, 6)), x)
        w = b.rand("w", (4, 6, 3, 3))
        return b.add(Conv2d(layout="NHWC"), h, w)

    graph = single_op_graph(build, ("N", 6, 6, 3), layout="NHWC")
    with pytest.raises(BackendError) as info:
        compile_cuda(graph)
    text = str(info.value)
    assert "Lambda" in text and "canonicalize-layout" in text


def test_artifact_round_trip_on_cuda(graph, rng, tmp_path):
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    path = keydnn.Sequential(graph, device="cuda").save(tmp_path / "model.json")
    model = keydnn.load(path, device="cuda")
    assert model.device == keydnn.Device("cuda", 0)
    np.testing.assert_allclose(model(x), run_reference(graph, x)[0], atol=2e-5)
    np.testing.assert_allclose(model(x), keydnn.load(path)(x), atol=2e-5)


def _neighbours(out):  # pragma: no cover - device code
    s = cuda.shared.array(32, np.float32)
    t = cuda.threadIdx.x
    s[t] = t
    cuda.syncthreads()
    out[t] = s[(t + 1) % 32]


@simulator_only
def test_simulator_threads_of_a_block_share_one_shared_array(monkeypatch):
    """The simulator allocates a shared array when the first thread of a block reaches it; unlocked, threads
    arriving together each got their own (a flaky wrong result in CI). Allocation is made slow here so that
    every thread arrives while it runs: each thread writes its slot and reads its neighbour's."""
    import time

    threads = 32
    neighbours = cuda.jit(_neighbours)
    fast_empty = np.empty

    def slow_empty(*args, **kwargs):
        time.sleep(0.005)
        return fast_empty(*args, **kwargs)

    out = cuda.to_device(np.full(threads, -1.0, dtype=np.float32))
    monkeypatch.setattr(np, "empty", slow_empty)
    neighbours[1, threads](out)
    monkeypatch.setattr(np, "empty", fast_empty)
    np.testing.assert_array_equal(out.copy_to_host(), (np.arange(threads) + 1) % threads)
