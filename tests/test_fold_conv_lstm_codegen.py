"""TimeDistributed over non-Dense layers (time folded into the batch: ``fold_time`` / ``unfold_time``) and
ConvLSTM1D/2D (``conv_lstm``) run as numba-cpu generated code, not the per-op kernels (issue 17), and match
Keras from every source form at batch 1 and 3 and at several sequence lengths, and the reference interpreter
for the IR-only cases (masks, initial states, float64, images taller than one im2col band)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from passes.builders import GraphBuilder

import keydnn
from keydnn.backends.numba_cpu.modes import compile_graph
from keydnn.backends.numba_cpu.runtime import executable as cg_exec
from keydnn.backends.numba_cpu.runtime.executable import CodegenExecutable
from keydnn.errors import SlowPathWarning
from keydnn.ir.ops.conv_recurrent import ConvLstm
from keydnn.ir.reference import run_reference

pytestmark = pytest.mark.filterwarnings("error::keydnn.errors.SlowPathWarning")

TOL = dict(atol=1e-4, rtol=1e-4)


def _codegen(model: keydnn.Model) -> CodegenExecutable:
    exe = model._compile()
    assert isinstance(exe, CodegenExecutable), f"ran on {type(exe).__name__}, not generated code"
    return exe


def _check(sources, inputs: list) -> None:
    """Every source form converts once, runs generated code, and matches its Keras model (and the reference
    interpreter) on every input (lists: several graph inputs)."""
    for form, src, live in sources:
        model = keydnn.from_keras(src, allow_non_linear_activation=True)
        for xs in inputs:
            xs = xs if isinstance(xs, list) else [xs]
            want = live(xs if len(xs) > 1 else xs[0])
            want = [np.asarray(w) for w in want] if isinstance(want, (list, tuple)) else [np.asarray(want)]
            got = model(*xs)
            got = got if isinstance(got, list) else [got]
            ref = run_reference(model.graph, *xs)
            assert len(got) == len(want), form
            for g, r, w in zip(got, ref, want):
                np.testing.assert_allclose(g, w, **TOL, err_msg=f"{form} at {[x.shape for x in xs]}")
                np.testing.assert_allclose(r, w, **TOL, err_msg=f"reference, {form}")
        _codegen(model)


def _td_cnn(k):
    L = k.layers
    inp = k.Input(shape=(None, 9, 9, 2))
    x = L.TimeDistributed(L.Conv2D(4, 3, padding="same", activation="relu"))(inp)
    x = L.TimeDistributed(L.BatchNormalization())(x)
    x = L.TimeDistributed(L.MaxPooling2D(2))(x)
    x = L.TimeDistributed(L.Conv2D(3, 2, strides=2))(x)
    x = L.TimeDistributed(L.AveragePooling2D(2, padding="same"))(x)
    x = L.TimeDistributed(L.Flatten())(x)
    x = L.GRU(5)(x)
    return k.Model(inp, L.Dense(2)(x))


def test_time_distributed_cnn_from_every_source_at_batch_1_and_3_and_any_length(keras_sources) -> None:
    rng = np.random.default_rng(21)
    inputs = [rng.standard_normal((b, t, 9, 9, 2)).astype("f4") for b, t in ((1, 4), (3, 4), (3, 7), (1, 1))]
    _check(keras_sources("cg_td_cnn", _td_cnn), inputs)


def _td_sequence_out(k):
    """TimeDistributed results as graph outputs (one written straight into the caller's array) and a
    TimeDistributed(Dense) after a folded Flatten (the per-step layers run on the unfolded sequence)."""
    L = k.layers
    inp = k.Input(shape=(5, 6, 6, 3))
    conv = L.TimeDistributed(L.Conv2D(2, 3, activation="tanh"))(inp)
    flat = L.TimeDistributed(L.Flatten())(conv)
    dense = L.TimeDistributed(L.Dense(4))(flat)
    pooled = L.TimeDistributed(L.GlobalMaxPooling2D())(inp)
    return k.Model(inp, [conv, dense, pooled])


def test_time_distributed_outputs_fixed_length(keras_sources) -> None:
    rng = np.random.default_rng(22)
    _check(keras_sources("cg_td_outputs", _td_sequence_out),
           [rng.standard_normal((b, 5, 6, 6, 3)).astype("f4") for b in (1, 3)])


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_folded_stages_split_over_threads(monkeypatch, batch) -> None:
    """Several threads share the N*T rows of a folded stage: every row is what Keras computes."""
    import keras

    monkeypatch.setattr(cg_exec, "PARALLEL_MIN_WORK", 0)
    L = keras.layers
    inp = keras.Input(shape=(None, 10, 10, 3))
    x = L.TimeDistributed(L.Conv2D(8, 3, activation="relu"))(inp)
    x = L.TimeDistributed(L.MaxPooling2D(2))(x)
    x = L.TimeDistributed(L.GlobalAveragePooling2D())(x)
    live = keras.Model(inp, L.LSTM(4, return_sequences=True)(x))
    model = keydnn.from_keras(live, allow_non_linear_activation=True)
    exe = _codegen(model)
    exe.set_threads(3)
    rng = np.random.default_rng(batch)
    for t in (6, 3, 6):  # back-to-back calls, two lengths
        x = rng.standard_normal((batch, t, 10, 10, 3)).astype("f4")
        np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL)


def _conv_lstm2d(k):
    L = k.layers
    inp = k.Input(shape=(None, 7, 5, 2))
    x = L.ConvLSTM2D(3, (3, 2), padding="same", return_sequences=True, go_backwards=True)(inp)
    x = L.ConvLSTM2D(4, 3, padding="same", return_sequences=True, recurrent_activation="hard_sigmoid")(x)
    x = L.ConvLSTM2D(2, (2, 3), activation="relu", use_bias=False)(x)
    return k.Model(inp, x)


def _conv_lstm1d(k):
    L = k.layers
    inp = k.Input(shape=(None, 9, 3))
    y, h, c = L.ConvLSTM1D(4, 3, padding="same", return_sequences=True, return_state=True)(inp)
    z = L.ConvLSTM1D(2, 2, strides=2, go_backwards=True)(y)
    return k.Model(inp, [y, h, c, z])


def test_conv_lstm_2d_from_every_source_at_batch_1_and_3_and_any_length(keras_sources) -> None:
    rng = np.random.default_rng(23)
    inputs = [rng.standard_normal((b, t, 7, 5, 2)).astype("f4") for b, t in ((1, 3), (3, 3), (3, 6), (1, 1))]
    _check(keras_sources("cg_conv_lstm2d", _conv_lstm2d), inputs)


def test_conv_lstm_1d_from_every_source_at_batch_1_and_3_and_any_length(keras_sources) -> None:
    rng = np.random.default_rng(24)
    inputs = [rng.standard_normal((b, t, 9, 3)).astype("f4") for b, t in ((1, 5), (3, 5), (3, 2))]
    _check(keras_sources("cg_conv_lstm1d", _conv_lstm1d), inputs)


def _conv_lstm_states(k):
    """An encoder's states as a decoder's ``initial_state`` (functional), states returned."""
    L = k.layers
    inp = k.Input(shape=(None, 6, 4, 2))
    dec_in = k.Input(shape=(None, 6, 4, 2))
    _, h, c = L.ConvLSTM2D(3, 3, padding="same", return_state=True)(inp)
    y = L.ConvLSTM2D(3, 3, padding="same", return_sequences=True)(dec_in, initial_state=[h, c])
    return k.Model([inp, dec_in], [y, h])


def test_conv_lstm_initial_states_from_every_source(keras_sources) -> None:
    rng = np.random.default_rng(25)
    inputs = [[rng.standard_normal((b, t, 6, 4, 2)).astype("f4"), rng.standard_normal((b, u, 6, 4, 2)).astype("f4")]
              for b, t, u in ((1, 3, 2), (3, 4, 5))]
    _check(keras_sources("cg_conv_lstm_states", _conv_lstm_states), inputs)


# -- the IR op directly: what Keras cannot express (masks on 5-D sequences) and sizes it would make slow --------
def _conv_lstm_graph(case: dict, hw: tuple[int, int] = (4, 3), filters: int = 2, kernel: tuple[int, int] = (3, 2),
                     dtype: str = "float32"):
    b = GraphBuilder("clstm", seed=4, dtype=dtype)
    g = 4 * filters
    x = b.input("x", ("N", "T", *hw, g))
    extra = [b.input("m", ("N", "T"))] if case.get("masked") else []
    extra += [b.input(f"s{k}", ("N", *hw, filters)) for k in range(case.get("initial_states", 0))]
    op = ConvLstm(filters=filters, kernel=kernel, **case)
    return b.build(b.add(op, x, b.rand("rk", (*kernel, filters, g), 0.5), *extra, name="clstm"))


def _feed(case: dict, batch: int, steps: int, hw: tuple[int, int] = (4, 3), filters: int = 2,
          dtype: str = "float32") -> list[np.ndarray]:
    rng = np.random.default_rng(batch * 100 + steps)
    feed = [rng.standard_normal((batch, steps, *hw, 4 * filters)).astype(dtype)]
    if case.get("masked"):
        m = np.ones((batch, steps), dtype)
        m[0, 1:] = 0  # post-padding
        if batch > 1:
            m[1, :] = 0  # all padding
        if batch > 2:
            m[2, :steps // 2] = 0  # pre-padding
        feed.append(m)
    feed += [rng.standard_normal((batch, *hw, filters)).astype(dtype) for _ in range(case.get("initial_states", 0))]
    return feed


CASES = [
    dict(),
    dict(return_sequences=True),
    dict(go_backwards=True, return_sequences=True, masked=True, zero_output_for_mask=True),
    dict(go_backwards=True, return_sequences=True, masked=True),
    dict(result="state_c", initial_states=2, masked=True),
    dict(result="state_h", initial_states=2, activation="relu", recurrent_activation="hard_sigmoid"),
    dict(masked=True, activation="softsign"),
    dict(return_sequences=True, recurrent_activation="hard_sigmoid"),
    dict(masked=True, initial_states=2, recurrent_activation="hard_sigmoid_k2"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "last")
def test_conv_lstm_op_matches_reference(case) -> None:
    graph = _conv_lstm_graph(case)
    exe = compile_graph(graph)
    assert isinstance(exe, CodegenExecutable)
    for batch, steps in ((1, 3), (3, 3), (3, 6)):
        feed = _feed(case, batch, steps)
        for got, want in zip(exe(*feed), run_reference(graph, *feed)):
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=f"batch {batch}, {steps} steps")


def test_conv_lstm_image_taller_than_one_band_and_threads(monkeypatch) -> None:
    """An image whose im2col panel takes several bands (the later bands read the previous step's h around
    their border, never the new one), on three threads, at batch 1 and 3."""
    from keydnn.backends.numba_cpu.codegen.emit_conv_recurrent import band_rows

    hw, filters, kernel = (37, 20), 6, (3, 3)  # bands of 15 rows: 15, 15, 7
    assert band_rows(hw[0], hw[1], kernel[0] * kernel[1] * filters) < hw[0] // 2
    case = dict(return_sequences=True, masked=True, initial_states=2)
    graph = _conv_lstm_graph(case, hw, filters, kernel)
    monkeypatch.setattr(cg_exec, "PARALLEL_MIN_WORK", 0)
    exe = compile_graph(graph)
    assert isinstance(exe, CodegenExecutable)
    exe.set_threads(3)
    for batch in (1, 3):
        feed = _feed(case, batch, 4, hw, filters)
        (got,), (want,) = exe(*feed), run_reference(graph, *feed)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_conv_lstm_float64() -> None:
    case = dict(return_sequences=True, masked=True, initial_states=2)
    graph = _conv_lstm_graph(case, dtype="float64")
    exe = compile_graph(graph)
    assert isinstance(exe, CodegenExecutable)
    feed = _feed(case, 3, 5, dtype="float64")
    (got,), (want,) = exe(*feed), run_reference(graph, *feed)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=1e-12)


def test_no_slow_path_for_sequence_layers() -> None:
    """The per-op-only list is empty: a graph with every sequence op kind compiles silently."""
    from keydnn.backends.numba_cpu.modes import PER_OP_ONLY

    assert PER_OP_ONLY == frozenset()
    graph = _conv_lstm_graph(dict(masked=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowPathWarning)
        compile_graph(graph, mode="codegen")


def _conv_lstm_then_td(k):
    """A ConvLSTM's sequence folded again for TimeDistributed layers, then a GRU."""
    L = k.layers
    inp = k.Input(shape=(None, 8, 6, 2))
    x = L.ConvLSTM2D(4, 3, padding="same", return_sequences=True)(inp)
    x = L.TimeDistributed(L.Conv2D(3, 3, strides=2))(x)
    x = L.TimeDistributed(L.GlobalAveragePooling2D())(x)
    return k.Model(inp, L.GRU(3)(x))


def test_conv_lstm_sequence_into_time_distributed_saved_and_loaded(tmp_path) -> None:
    import keras

    live = _conv_lstm_then_td(keras)
    model = keydnn.from_keras(live)
    model.save(tmp_path / "m.json")
    loaded = keydnn.load(tmp_path / "m.json")
    rng = np.random.default_rng(26)
    for b, t in ((1, 4), (3, 2)):
        x = rng.standard_normal((b, t, 8, 6, 2)).astype("f4")
        want = np.asarray(live(x))
        np.testing.assert_allclose(model(x), want, **TOL)
        np.testing.assert_allclose(loaded(x), want, **TOL)
    _codegen(model), _codegen(loaded)


@pytest.mark.onednn  # TensorFlow runs channels_first convolutions only with its oneDNN kernels on
def test_time_distributed_channels_first() -> None:
    """channels_first inner layers: the folded values keep the model's layout. Compared with the eager call:
    ``keras_runner``'s XLA fallback retraces with a relaxed time axis and then returns wrong outputs for
    TimeDistributed models at a second length (KERAS_FILES.md)."""
    import keras

    from keydnn.keras_runner import tf_runs_channels_first

    if not tf_runs_channels_first():
        pytest.skip("TensorFlow runs no channels_first convolution eagerly on this CPU")
    L = keras.layers
    inp = keras.Input(shape=(None, 2, 7, 7))
    x = L.TimeDistributed(L.Conv2D(3, 3, data_format="channels_first"))(inp)
    x = L.TimeDistributed(L.MaxPooling2D(2, data_format="channels_first"))(x)
    x = L.TimeDistributed(L.Flatten(data_format="channels_first"))(x)
    live = keras.Model(inp, L.LSTM(3)(x))
    model = keydnn.from_keras(live)
    rng = np.random.default_rng(27)
    for b, t in ((1, 3), (3, 5)):
        x = rng.standard_normal((b, t, 2, 7, 7)).astype("f4")
        np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL)
    _codegen(model)


def test_inline_stages_restore_the_batch(monkeypatch) -> None:
    """Stages rendered inline in one entry (``KEYDNN_SHARED_STAGES=0``) scale ``N`` for a folded stage and put
    it back, so the stages after it see the graph's batch again."""
    import keras

    monkeypatch.setenv("KEYDNN_SHARED_STAGES", "0")
    live = _conv_lstm_then_td(keras)
    model = keydnn.from_keras(live)
    exe = _codegen(model)
    rng = np.random.default_rng(28)
    for b in (1, 3):
        x = rng.standard_normal((b, 3, 8, 6, 2)).astype("f4")
        np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL)
    source = next(iter(exe._variants.values())).program.source
    assert "    N = N * 3\n" in source and "    N = N // 3\n" in source


_INNER = ("conv1d", "maxpool1d", "gap1d", "depthwise", "separable", "transposed", "zero_pad", "upsample", "cropping",
          "layer_norm", "reshape", "permute", "conv3d")


def _inner_layers() -> dict:
    """name -> (per-step input shape, layer factory) of layers TimeDistributed folds time into the batch for."""
    import keras

    L = keras.layers
    return {name: (shape, make) for name, shape, make in [
        ("conv1d", (9, 3), lambda: L.Conv1D(4, 3, padding="same")),
        ("maxpool1d", (9, 3), lambda: L.MaxPooling1D(2)),
        ("gap1d", (9, 3), lambda: L.GlobalAveragePooling1D()),
        ("depthwise", (6, 6, 3), lambda: L.DepthwiseConv2D(3, depth_multiplier=2)),
        ("separable", (6, 6, 3), lambda: L.SeparableConv2D(4, 3, padding="same")),
        ("transposed", (4, 4, 3), lambda: L.Conv2DTranspose(2, 3, strides=2)),
        ("zero_pad", (5, 5, 2), lambda: L.ZeroPadding2D(((1, 0), (2, 1)))),
        ("upsample", (3, 4, 2), lambda: L.UpSampling2D(2)),
        ("cropping", (6, 6, 2), lambda: L.Cropping2D(1)),
        ("layer_norm", (5, 4), lambda: L.LayerNormalization()),
        ("reshape", (6, 4), lambda: L.Reshape((3, 8))),
        ("permute", (6, 4), lambda: L.Permute((2, 1))),
        ("conv3d", (4, 4, 4, 2), lambda: L.Conv3D(3, 2)),
    ]}


@pytest.mark.parametrize("name", _INNER)
def test_time_distributed_over_other_layers(name) -> None:
    import keras

    shape, make = _inner_layers()[name]
    L = keras.layers
    inp = keras.Input(shape=(None,) + shape)
    live = keras.Model(inp, L.TimeDistributed(make())(inp), name=f"td_{name}")
    model = keydnn.from_keras(live)
    rng = np.random.default_rng(_INNER.index(name))
    for b, t in ((1, 3), (3, 2)):
        x = rng.standard_normal((b, t) + shape).astype("f4")
        np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL, err_msg=f"{name} at {x.shape}")
    _codegen(model)


_TIER_SCRIPT = """
import sys, numpy as np, keydnn
from keydnn.backends.numba_cpu.codegen.target import current_target
from keydnn.backends.numba_cpu.runtime.executable import CodegenExecutable
d = sys.argv[1]
m = keydnn.load(f"{d}/m.json")
worst = 0.0
for i in range(2):
    x = np.load(f"{d}/x{i}.npy")
    worst = max(worst, float(np.abs(m(x) - np.load(f"{d}/y{i}.npy")).max()))
assert isinstance(m._compile(), CodegenExecutable), type(m._compile())
print(current_target().name, worst)
"""


@pytest.mark.slow  # a fresh process compiles the model for the tier (about 20 s)
@pytest.mark.parametrize("tier", ["avx2", "generic"])
def test_conv_lstm_and_folds_on_narrower_tiers(tier, tmp_path) -> None:
    """A fresh process with the tier forced (other vector widths: other micro-kernel panels for the recurrent
    kernel) runs a ConvLSTM2D -> TimeDistributed -> GRU model on generated code and matches Keras."""
    import keras

    from keydnn.backends.numba_cpu.codegen import target as target_mod
    from keydnn.backends.numba_cpu.codegen.target import ENV, TIERS

    if tier != "generic" and not TIERS[tier].requires <= target_mod._cpu_features():
        pytest.skip(f"this CPU lacks the {tier} tier")
    live = _conv_lstm_then_td(keras)
    keydnn.from_keras(live).save(tmp_path / "m.json")
    rng = np.random.default_rng(29)
    for i, (b, t) in enumerate(((1, 3), (3, 5))):
        x = rng.standard_normal((b, t, 8, 6, 2)).astype("f4")
        np.save(tmp_path / f"x{i}.npy", x)
        np.save(tmp_path / f"y{i}.npy", np.asarray(live(x)))
    env = {**os.environ, ENV: tier, "KEYDNN_CACHE_DIR": str(tmp_path / "cache"), "KEYDNN_ISOLATE_READER": "0"}
    proc = subprocess.run([sys.executable, "-c", _TIER_SCRIPT, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, err = proc.stdout.split()[-2:]
    assert name == tier and float(err) < 1e-4


def test_batch_1_input_beside_a_batched_one() -> None:
    """A batch-1 input beside a batch-3 one, where the generated code needs the folded (and recurrent) values
    batched: it runs the batch-3 code on the input repeated, and an output that depends on batch-1 inputs only
    keeps its one row, as the reference (and the per-op kernels) give it."""
    from keydnn.ir.ops import Add, Dense
    from keydnn.ir.ops.recurrent import CELL_GATES, FoldTime, Rnn, UnfoldTime

    b = GraphBuilder("broadcast", seed=6)
    x = b.input("x", ("N", "T", 3))
    y = b.input("y", ("N", 4))
    folded = b.add(Dense(), b.add(FoldTime(), x, name="fold"), b.rand("w", (3, 2)), name="dense")
    seq = b.add(UnfoldTime(), folded, x, name="unfold")
    proj = b.add(Dense(), seq, b.rand("wp", (2, 12)), name="proj")
    h = b.add(Rnn(cell="gru", units=4, gate_order=CELL_GATES["gru"]), proj, b.rand("u", (4, 12)),
              b.rand("rb", (12,)), name="gru")
    graph = b.build(seq, b.add(Add(), h, y, name="add"))
    exe = compile_graph(graph)
    assert isinstance(exe, CodegenExecutable)
    rng = np.random.default_rng(7)
    for bx, by in ((1, 3), (3, 3), (1, 1), (1, 3)):
        feed = [rng.standard_normal((bx, 5, 3)).astype("f4"), rng.standard_normal((by, 4)).astype("f4")]
        got, want = exe(*feed), run_reference(graph, *feed)
        for g, w in zip(got, want):
            assert g.shape == w.shape, (bx, by)
            np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)
