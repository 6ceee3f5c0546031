"""Sequence models on numba-cpu's generated code (issue 17): recurrences, embeddings, masks and variable
lengths take the codegen path (not the per-op kernels) and match Keras, on every code-generation tier."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import keydnn
from keydnn.backends.numba_cpu.runtime import executable as cg_exec
from keydnn.backends.numba_cpu.codegen import target as target_mod
from keydnn.backends.numba_cpu.runtime.executable import CodegenExecutable
from keydnn.backends.numba_cpu.codegen.target import ENV, TIERS

pytest.importorskip("tensorflow")

TOL = dict(atol=1e-4, rtol=1e-4)


def _tokens(rng: np.random.Generator, batch: int, steps: int, vocab: int, dtype: str = "int32") -> np.ndarray:
    x = rng.integers(1, vocab, size=(batch, steps)).astype(dtype)
    x[0, steps // 2:] = 0  # post-padding
    x[1, :] = 0  # all padding
    x[2, : steps // 3] = 0  # pre-padding
    return x


def _text(cell: str, mask_zero: bool = True, **kw):
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None,), dtype="int32")
        x = L.Embedding(30, 6, mask_zero=mask_zero)(inp)
        x = getattr(L, cell)(5, **kw)(x)
        return k.Model(inp, L.Dense(3)(x))

    return build


def _codegen(model: keydnn.Model) -> CodegenExecutable:
    exe = model._compile()
    assert isinstance(exe, CodegenExecutable), f"ran on {type(exe).__name__}, not generated code"
    return exe


def _match(model: keydnn.Model, live, inputs: list[np.ndarray], form: str = "") -> None:
    for x in inputs:
        np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL, err_msg=f"{form} at {x.shape}")


@pytest.mark.parametrize("cell,kw", [
    ("LSTM", {}),
    ("GRU", {}),
    ("GRU", {"reset_after": False, "go_backwards": True}),
    ("SimpleRNN", {"activation": "relu"}),
])
def test_masked_text_classifier_runs_generated_code_from_every_source(keras_sources, cell, kw) -> None:
    name = f"cg_txt_{cell}_" + "_".join(f"{k}{v}" for k, v in sorted(kw.items()))
    rng = np.random.default_rng(3)
    inputs = [_tokens(rng, 5, 11, 30), _tokens(rng, 4, 6, 30)]
    for form, src, live in keras_sources(name, _text(cell, **kw)):
        model = keydnn.from_keras(src)
        _match(model, live, inputs, form)
        exe = _codegen(model)
        assert any(key[0] == ((11,),) for key in exe._variants), "length 11 has its own compiled shape"


@pytest.mark.parametrize("cell,kw", [
    ("LSTM", {"return_sequences": True, "recurrent_activation": "hard_sigmoid", "activation": "softsign"}),
    ("GRU", {"return_sequences": True, "go_backwards": True}),
    ("SimpleRNN", {"return_sequences": True, "use_bias": False}),
])
def test_stacked_sequences_fixed_and_variable_length(cell, kw) -> None:
    import keras

    L = keras.layers
    for steps in (7, None):
        inp = keras.Input(shape=(steps, 3))
        x = getattr(L, cell)(4, **kw)(inp)
        x = getattr(L, cell)(6)(x)
        live = keras.Model(inp, L.Dense(2)(x))
        model = keydnn.from_keras(live)
        rng = np.random.default_rng(0)
        lengths = (7,) if steps else (7, 3, 12)
        _match(model, live, [rng.standard_normal((b, t, 3)).astype("f4") for t in lengths for b in (1, 3, 17)])
        _codegen(model)


def test_bidirectional_masking_repeat_vector_encoder_decoder() -> None:
    """Masking, Bidirectional (concat), return_state into a decoder's initial_state, RepeatVector."""
    import keras

    L = keras.layers
    inp = keras.Input(shape=(None, 4))
    x = L.Masking(mask_value=0.0)(inp)
    x = L.Bidirectional(L.LSTM(5, return_sequences=True))(x)
    _, h, c = L.LSTM(6, return_state=True)(x)
    rep = L.RepeatVector(3)(h)
    dec = L.LSTM(6, return_sequences=True)(rep, initial_state=[h, c])
    live = keras.Model(inp, L.TimeDistributed(L.Dense(2))(dec))
    model = keydnn.from_keras(live)
    rng = np.random.default_rng(1)
    inputs = []
    for t in (8, 5):
        x = rng.standard_normal((4, t, 4)).astype("f4")
        x[0, t // 2:] = 0.0
        x[1] = 0.0
        inputs.append(x)
    _match(model, live, inputs)
    _codegen(model)


@pytest.mark.parametrize("dtype", ["int64", "uint8", "int16"])
def test_token_ids_of_any_dtype_and_out_of_range_ids(dtype) -> None:
    import keras

    L = keras.layers
    inp = keras.Input(shape=(None,), dtype="int32")
    live = keras.Model(inp, L.GRU(4)(L.Embedding(30, 5, mask_zero=True)(inp)))
    model = keydnn.from_keras(live)
    rng = np.random.default_rng(2)
    x = _tokens(rng, 4, 9, 30)
    np.testing.assert_allclose(model(x.astype(dtype)), np.asarray(live(x)), **TOL)
    _codegen(model)
    bad = x.astype("int64")
    bad[3, 4] = 30
    with pytest.raises(ValueError, match=r"index 30 is outside the table \[0, 30\)"):
        model(bad)
    bad[3, 4] = -1
    with pytest.raises(ValueError, match=r"index -1 is outside the table"):
        model(bad)


def test_embedding_without_mask_and_dense_head() -> None:
    import keras

    L = keras.layers
    inp = keras.Input(shape=(12,), dtype="int32")
    x = L.Embedding(50, 8)(inp)
    x = L.LSTM(7)(x)
    live = keras.Model(inp, L.Softmax()(L.Dense(3)(x)))
    model = keydnn.from_keras(live)
    rng = np.random.default_rng(5)
    _match(model, live, [rng.integers(0, 50, size=(b, 12)).astype("int32") for b in (1, 2, 9, 33)])
    _codegen(model)


def test_a_repeated_length_never_compiles_again_and_lengths_are_bounded(monkeypatch) -> None:
    import keras

    L = keras.layers
    inp = keras.Input(shape=(None, 2))
    live = keras.Model(inp, L.GRU(3)(inp))
    model = keydnn.from_keras(live)
    exe = _codegen(model)
    builds = []
    real = CodegenExecutable._build

    def counting(self, key):
        builds.append(key)
        return real(self, key)

    monkeypatch.setattr(CodegenExecutable, "_build", counting)
    monkeypatch.setattr(cg_exec, "MAX_VARIANTS", 2)
    rng = np.random.default_rng(0)
    for t in (4, 5, 4, 5, 4):
        x = rng.standard_normal((2, t, 2)).astype("f4")
        np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL)
    assert [k[0] for k in builds] == [((4, 2),), ((5, 2),)]
    model(rng.standard_normal((1, 6, 2)).astype("f4"))
    assert len(exe._variants) == 2  # the LRU bound: length 4 (least recently used) was dropped
    assert ((4, 2),) not in [k[0] for k in exe._variants]


def test_ops_mode_still_runs_sequence_graphs(monkeypatch) -> None:
    import keras

    from keydnn.backends.numba_cpu.ops.executor import NumbaCpuExecutable

    monkeypatch.setenv("KEYDNN_CPU_MODE", "ops")
    L = keras.layers
    inp = keras.Input(shape=(None,), dtype="int32")
    live = keras.Model(inp, L.LSTM(4)(L.Embedding(30, 5, mask_zero=True)(inp)))
    model = keydnn.from_keras(live)
    _match(model, live, [_tokens(np.random.default_rng(0), 4, 7, 30)])
    assert isinstance(model._compile(), NumbaCpuExecutable)


_TIER_SCRIPT = """
import sys, numpy as np, keydnn
from keydnn.backends.numba_cpu.codegen.target import current_target
from keydnn.backends.numba_cpu.runtime.executable import CodegenExecutable
d = sys.argv[1]
worst = 0.0
for name in ("text", "gru"):
    m = keydnn.load(f"{d}/{name}.json")
    for i in range(2):
        x = np.load(f"{d}/{name}_x{i}.npy")
        worst = max(worst, float(np.abs(m(x) - np.load(f"{d}/{name}_y{i}.npy")).max()))
    assert isinstance(m._compile(), CodegenExecutable), type(m._compile())
print(current_target().name, worst)
"""


@pytest.mark.parametrize("tier", ["avx2", "generic"])
def test_sequence_codegen_on_narrower_tiers(tier, tmp_path) -> None:
    """A fresh process with the tier forced runs the masked text classifier and a variable-length stacked
    GRU on generated code and matches Keras."""
    if tier != "generic" and not TIERS[tier].requires <= target_mod._cpu_features():
        pytest.skip(f"this CPU lacks the {tier} tier")
    import keras

    L = keras.layers
    inp = keras.Input(shape=(None,), dtype="int32")
    text = keras.Model(inp, L.Dense(3)(L.LSTM(9)(L.Embedding(30, 6, mask_zero=True)(inp))))
    inp = keras.Input(shape=(None, 3))
    gru = keras.Model(inp, L.GRU(7)(L.GRU(20, return_sequences=True, reset_after=False)(inp)))
    rng = np.random.default_rng(4)
    cases = {"text": (text, [_tokens(rng, 11, 9, 30), _tokens(rng, 4, 5, 30)]),
             "gru": (gru, [rng.standard_normal((10, 6, 3)).astype("f4"), rng.standard_normal((1, 9, 3)).astype("f4")])}
    for name, (live, xs) in cases.items():
        keydnn.from_keras(live).save(tmp_path / f"{name}.json")
        for i, x in enumerate(xs):
            np.save(tmp_path / f"{name}_x{i}.npy", x)
            np.save(tmp_path / f"{name}_y{i}.npy", np.asarray(live(x)))
    env = {**os.environ, ENV: tier, "KEYDNN_CACHE_DIR": str(tmp_path / "cache"), "KEYDNN_ISOLATE_READER": "0"}
    proc = subprocess.run([sys.executable, "-c", _TIER_SCRIPT, str(tmp_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, err = proc.stdout.split()[-2:]
    assert name == tier and float(err) < 1e-4


@pytest.mark.parametrize("batch", [1, 2, 5, 19])
def test_recurrence_split_over_threads(monkeypatch, batch) -> None:
    """Several threads share the batch rows of a recurrence (fewer rows per item at a small batch): every
    row's result is what Keras computes, whichever thread ran it."""
    import keras

    monkeypatch.setattr(cg_exec, "PARALLEL_MIN_WORK", 0)
    L = keras.layers
    inp = keras.Input(shape=(None,), dtype="int32")
    x = L.Embedding(30, 6, mask_zero=True)(inp)
    x = L.Bidirectional(L.GRU(5, return_sequences=True), merge_mode="sum")(x)
    live = keras.Model(inp, L.LSTM(7)(x))
    model = keydnn.from_keras(live)
    exe = _codegen(model)
    exe.set_threads(3)
    rng = np.random.default_rng(batch)
    x = rng.integers(0, 30, size=(batch, 8)).astype("int32")
    x[0, 5:] = 0
    for _ in range(3):  # back-to-back calls
        np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL)
