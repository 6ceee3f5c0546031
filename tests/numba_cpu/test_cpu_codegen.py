"""numba-cpu whole-graph code generation: random graphs, helper threads and the worker pool, chunking, alignment, the generated source."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from cpu_helpers import (
    TOL,
    check,
    check_many,
    conv_graph,
    graph_of,
    make_graph,
    node,
    randn,
    seed_cnn,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from keydnn.backends.numba_cpu import compile_graph
from keydnn.errors import BackendError
from keydnn.ir import Node, run_reference
from keydnn.ir.ops import (
    Activation,
    Add,
    AvgPool2d,
    Concat,
    Conv2d,
    Crop2d,
    Dense,
    Flatten,
    GlobalAvgPool2d,
    Max,
    MaxPool2d,
    Pad2d,
    PRelu,
    Relu,
    ScaleShift,
    Softmax,
    Transpose,
    Upsample2d,
)

# -- whole-graph code generation ------------------------------------------------------------------

def _conv_op(data: st.DataObject, c: int, h: int, w: int, weights: dict, name: str) -> tuple[Conv2d, list[str], int]:
    groups = data.draw(st.sampled_from([1, 1, 1, c]), label="groups")
    o = data.draw(st.integers(1, 12)) if groups == 1 else c * data.draw(st.integers(1, 2))
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    strides = (data.draw(st.sampled_from([1, 1, 2])), data.draw(st.sampled_from([1, 1, 2])))
    pads = (kh // 2, (kh - 1) // 2, kw // 2, (kw - 1) // 2)
    act = data.draw(st.sampled_from([None, Relu(), Relu(max_value=6.0), Activation(function="tanh")]))
    cg = c // groups
    weights[f"{name}_w"] = randn(o, cg, kh, kw, seed=len(weights), scale=(cg * kh * kw) ** -0.5)
    inputs = [f"{name}_w"]
    if data.draw(st.booleans()):
        weights[f"{name}_b"] = randn(o, seed=len(weights), scale=0.1)
        inputs.append(f"{name}_b")
    return Conv2d(strides=strides, pads=pads, groups=groups, activation=act), inputs, o


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_codegen_random_graphs_match_reference(data: st.DataObject) -> None:
    """Random NCHW chains (with skip connections) through the generated code, at two batch sizes."""
    c, h, w = data.draw(st.integers(1, 6)), data.draw(st.integers(4, 20)), data.draw(st.integers(4, 36))
    shape0 = (1, c, h, w)
    weights: dict = {}
    nodes: list[Node] = []
    cur = "x"
    for i in range(data.draw(st.integers(1, 5), label="layers")):
        kind = data.draw(st.sampled_from(["conv", "conv", "pool", "act", "affine", "spatial", "merge"]), label="op")
        name = f"n{i}"
        if kind == "conv":
            op, ins, c = _conv_op(data, c, h, w, weights, name)
            nodes.append(node(name, op, cur, *ins))
            h, w = -(-h // op.strides[0]), -(-w // op.strides[1])
        elif kind == "pool" and min(h, w) >= 2:
            cls = data.draw(st.sampled_from([MaxPool2d, AvgPool2d]))
            nodes.append(node(name, cls(kernel=(2, 2), strides=(2, 2)), cur))
            h, w = h // 2, w // 2
        elif kind == "act":
            nodes.append(node(name, data.draw(st.sampled_from([Relu(), Activation(function="sigmoid")])), cur))
        elif kind == "affine":
            weights[f"{name}_s"], weights[f"{name}_t"] = randn(c, seed=i + 50), randn(c, seed=i + 60)
            weights[f"{name}_a"] = randn(c, 1, 1, seed=i + 70, scale=0.2)
            op = data.draw(st.sampled_from(["ss", "prelu"]))
            nodes.append(node(name, ScaleShift(axis=1), cur, f"{name}_s", f"{name}_t") if op == "ss"
                         else node(name, PRelu(), cur, f"{name}_a"))
            for k in ([f"{name}_a"] if op == "ss" else [f"{name}_s", f"{name}_t"]):
                weights.pop(k)
        elif kind == "spatial":
            which = data.draw(st.sampled_from(["pad", "crop", "up", "transpose"]))
            if which == "pad":
                nodes.append(node(name, Pad2d(pads=(1, 0, 2, 1)), cur))
                h, w = h + 1, w + 3
            elif which == "crop" and min(h, w) >= 3:
                nodes.append(node(name, Crop2d(crops=(1, 0, 0, 1)), cur))
                h, w = h - 1, w - 1
            elif which == "up" and h * w <= 200:
                nodes.append(node(name, Upsample2d(factors=(2, 1)), cur))
                h = 2 * h
            else:  # a round trip through channels_last: two gathers
                nodes += [node(f"{name}_t", Transpose(perm=(0, 2, 3, 1), layout="NHWC"), cur),
                          node(name, Transpose(perm=(0, 3, 1, 2), layout="NCHW"), f"{name}_t")]
        elif kind == "merge":
            nodes.append(node(f"{name}_r", Relu(), cur))
            merge = data.draw(st.sampled_from(["add", "max", "concat"]))
            op = {"add": Add(), "max": Max(), "concat": Concat(axis=1)}[merge]
            nodes.append(node(name, op, cur, f"{name}_r"))
            c = 2 * c if merge == "concat" else c
        else:
            continue
        cur = nodes[-1].outputs[0].name
    head = data.draw(st.sampled_from(["spatial", "gap", "dense"]), label="head")
    if head == "gap":
        nodes.append(node("gap", GlobalAvgPool2d(), cur))
        cur = "gap"
    elif head == "dense":
        weights["fc_w"] = randn(c * h * w, 10, seed=99, scale=(c * h * w) ** -0.5)
        weights["fc_b"] = randn(10, seed=98)
        nodes += [node("flat", Flatten(), cur), node("fc", Dense(activation=Relu()), "flat", "fc_w", "fc_b"),
                  node("sm", Softmax(), "fc")]
        cur = "sm"
    if not nodes:
        nodes.append(node("r", Relu(), "x"))
        cur = "r"
    g = make_graph(nodes, shape0, weights, outputs=(cur,) if cur != nodes[-1].outputs[0].name else None)
    exe = compile_graph(g, mode="codegen")
    assert exe.mode == "codegen"
    for n in (1, data.draw(st.integers(2, 5), label="batch")):
        check(g, randn(n, *shape0[1:], seed=n), exe=exe)


@pytest.fixture(params=["native-pool", "python-helpers"])
def threaded(request, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every codegen call uses three threads (more than CI has cores: the scheduler must not care), joined
    by the native worker pool (where a C compiler builds it) or by Python helper threads."""
    from keydnn.backends.numba_cpu.runtime import executable as cg_exec

    monkeypatch.setattr(cg_exec, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(cg_exec, "_THREADS", 3)
    if request.param == "python-helpers":
        monkeypatch.setattr(cg_exec, "_POOL", [None])
    elif cg_exec._pool() is None:
        pytest.skip("no native worker pool here (no C compiler, or the compile cache is off)")


def test_codegen_helper_threads_match_reference(threaded: None) -> None:
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    for n in (1, 2, 7):
        for seed in range(3):  # back-to-back calls: a late helper must never touch the next call
            check(g, randn(n, 1, 28, 28, seed=10 * n + seed), exe=exe)


@pytest.mark.parametrize("threads", [3, 6])
@pytest.mark.parametrize("helpers", ["never-come", "python-helpers"])
def test_every_owner_range_runs_whoever_comes(threads: int, helpers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage's items are cut into one range per thread (``cg_source.OWNERS`` of them at most, shared by the
    threads beyond): when no helper ever comes, the caller alone must run every range; with more threads than
    ranges, threads share a range's counter. Both compute exactly what one thread computes."""
    from keydnn.backends.numba_cpu.codegen.source import OWNERS
    from keydnn.backends.numba_cpu.runtime import call_plan
    from keydnn.backends.numba_cpu.runtime import executable as cg_exec

    assert 3 < OWNERS < 6  # the two counts fall on each side of the number of ranges
    monkeypatch.setattr(cg_exec, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(cg_exec, "_THREADS", threads)
    monkeypatch.setattr(cg_exec, "_POOL", [None])
    if helpers == "never-come":
        monkeypatch.setattr(call_plan.HELPERS, "submit", lambda *args, **kwargs: None)
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    errors: list[BaseException] = []

    def calls() -> None:
        try:
            for n in (1, 3):
                check(g, randn(n, 1, 28, 28, seed=20 + n), exe=exe)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    worker = threading.Thread(target=calls, daemon=True)  # a caller waiting forever for items fails, not hangs
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the calling thread waits for items no thread claims"
    if errors:
        raise errors[0]


def test_native_pool_runs_workers_and_survives_fork(threaded: None, request) -> None:
    """The pool's workers really take part, and a forked child (no threads of its parent) starts its own."""
    import os

    from keydnn.backends.numba_cpu.runtime import executable as cg_exec
    from keydnn.backends.numba_cpu.runtime import pool as cpu_pool

    if request.node.callspec.params["threaded"] != "native-pool":
        pytest.skip("native pool only")
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    check(g, randn(4, 1, 28, 28, seed=3), exe=exe)
    assert next(iter(exe._variants.values())).aot
    lib = cpu_pool._library()
    assert lib.keydnn_pool_workers() >= 2
    pid = os.fork()
    if pid == 0:  # the child: must compute correctly, not wait for workers that do not exist
        code = 1
        try:
            x = randn(3, 1, 28, 28, seed=4)
            ok = np.allclose(exe(x)[0], run_reference(g, x)[0], **TOL)
            code = 0 if ok and lib.keydnn_pool_workers() >= 2 else 1
        finally:
            os._exit(code)
    import signal
    import time

    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung calling the model")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert cg_exec._pool() is not None


def test_codegen_concurrent_callers_with_helper_threads(threaded: None) -> None:
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    inputs = [randn((1, 4)[i % 2], 1, 28, 28, seed=200 + i) for i in range(4)]
    expected = [run_reference(g, x)[0] for x in inputs]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(20):
                np.testing.assert_allclose(exe(inputs[i])[0], expected[i], **TOL)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_codegen_float64_and_unbatched_operand() -> None:
    g = seed_cnn("float64")
    exe = compile_graph(g, mode="codegen")
    assert exe.mode == "codegen"
    check(g, randn(3, 1, 28, 28, dtype="float64"), exe=exe, rtol=1e-10, atol=1e-12)
    # an operand with batch 1 broadcasts over the other's batch (its own compiled variant)
    g2 = graph_of([node("m", Add(), "a", "b")], {"a": (3, 4, 5), "b": (1, 4, 5)})
    check_many(g2, randn(3, 4, 5), randn(1, 4, 5), mode="codegen")
    check_many(g2, randn(2, 4, 5), randn(2, 4, 5), mode="codegen")


def test_codegen_large_batch_runs_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch larger than the chunk runs as several entry calls (a ragged last chunk included) writing into
    one output; a graph with an unbatched operand is never split."""
    from keydnn.backends.numba_cpu.runtime import executable as cg_exec

    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    x = randn(11, 1, 28, 28, seed=3)
    monkeypatch.setenv("KEYDNN_CPU_CHUNK", "4")
    check(g, x, exe=exe)
    plans = exe._local.plans
    assert plans[((11, 1, 28, 28),)].chunk == 4 and plans[((11, 1, 28, 28),)].arena.size == 0
    assert {((4, 1, 28, 28),), ((3, 1, 28, 28),)} <= set(plans)
    prog = next(iter(exe._variants.values())).program
    assert cg_exec.batch_chunk(prog, (((1, 28, 28),), (False,))) >= 1 << 60
    monkeypatch.delenv("KEYDNN_CPU_CHUNK")
    per_sample = (prog.arena_per_sample + 784 + 10) * 4
    assert cg_exec.batch_chunk(prog, (((1, 28, 28),), (True,))) == max(cg_exec.MIN_CHUNK,
                                                                       cg_exec.CHUNK_BYTES // per_sample)


def test_codegen_fast_call_path_follows_shape_and_layout() -> None:
    """Repeated calls take a bound fast path for the last input shape; other shapes, a strided view, another
    dtype and a read-only array still give the reference result, and fresh outputs every call."""
    g = seed_cnn()
    exe = compile_graph(g, mode="codegen")
    ref = compile_graph(g, mode="ops")
    x2, x3 = randn(2, 1, 28, 28, seed=1), randn(3, 1, 28, 28, seed=2)
    wide = randn(2, 1, 28, 56, seed=3)
    readonly = randn(2, 1, 28, 28, seed=4)
    readonly.flags.writeable = False
    first = None
    for x in (x2, x2, x3, x2, wide[..., ::2], x2.astype(np.float64), readonly, x2):
        out = exe(x)[0]
        np.testing.assert_allclose(out, ref(np.ascontiguousarray(x, dtype=np.float32))[0], rtol=1e-5, atol=1e-6)
        if first is None:
            first = out
        else:
            assert out is not first
    if next(iter(exe._variants.values())).aot:  # the bound path exists for prebuilt entries
        assert exe._local.fast is not None and exe._local.fast[0] == (2, 1, 28, 28)


def test_array_address_matches_numpy() -> None:
    """The fast data-pointer read agrees with numpy for fresh arrays, slices, views and other dtypes."""
    from keydnn.backends.numba_cpu.runtime.executable import array_address

    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    for a in (base, base[2:5], base[3], base.reshape(-1)[7:], np.empty((0, 3), np.float32), np.ones(5, np.int64)):
        assert array_address(a) == a.ctypes.data


def test_codegen_arena_is_aligned() -> None:
    """Arena buffers and thread scratch sit at 64-byte boundaries: a vector load across two cache lines costs
    two (numpy allocates at 16-byte boundaries only)."""
    exe = compile_graph(seed_cnn(), mode="codegen")
    exe(randn(2, 1, 28, 28))
    plan = next(iter(exe._local.plans.values()))
    prog = plan.var.program
    assert plan.arena.ctypes.data % 64 == 0
    assert prog.arena_per_sample % 16 == 0 and prog.arena_fixed % 16 == 0 and prog.scratch_per_thread % 16 == 0


def test_mode_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    g = make_graph([node("r", Relu(), "x")], (1, 4), layout="NC")
    assert compile_graph(g).mode == "codegen"
    monkeypatch.setenv("KEYDNN_CPU_MODE", "ops")
    assert compile_graph(g).mode == "ops"
    assert compile_graph(g, mode="codegen").mode == "codegen"
    monkeypatch.setenv("KEYDNN_CPU_MODE", "fast")
    with pytest.raises(BackendError, match="KEYDNN_CPU_MODE"):
        compile_graph(g)
    with pytest.raises(ValueError):
        compile_graph(g, mode="fast")


def test_codegen_source_has_shapes_as_literals() -> None:
    exe = compile_graph(seed_cnn(), mode="codegen")
    src = exe.source
    prog = next(iter(exe._variants.values())).program
    assert "def entry(" in src and prog.n_stages == 7
    # per-sample sizes are fixed numbers (in the stage functions' parameter tables); only the batch N is a variable
    assert 784 in prog.tables and 6272 in prog.tables


def test_generated_kernel_files_are_current() -> None:
    from keydnn.backends.numba_cpu.codegen import ukernel_source
    from keydnn.backends.numba_cpu.kernels import thunks as cg_thunks

    assert ukernel_source.UKERNELS_PATH.read_text() == ukernel_source.render_ukernels(), \
        "regenerate with: python -m keydnn.backends.numba_cpu.codegen.ukernel_source"
    module = cg_thunks.thunks_module()  # rendered into the compile cache, keyed by its text and sources
    assert Path(module.__file__).read_text() == cg_thunks.render_thunks()
    assert cg_thunks.sources_digest()[:8] and Path(module.__file__).name.startswith("thunks_")


def test_cache_can_be_turned_off(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("KEYDNN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KEYDNN_CACHE", "0")
    g, x = conv_graph(1, 2, 5, 19, 3, (3, 3), seed=77)  # a structure no other test compiles
    check(g, x, exe=compile_graph(g, mode="codegen"))
    assert not (tmp_path / "cache").exists()
