"""Sequence models against Keras, from every source form: Embedding, SimpleRNN, LSTM, GRU, Bidirectional,
TimeDistributed, RepeatVector, Masking, masks on padded batches, two lengths from one conversion,
initial_state / return_state in functional models, and the reference interpreter as a second oracle."""

from __future__ import annotations

import numpy as np
import pytest

import keydnn
from keydnn.ir.reference import run_reference

pytest.importorskip("tensorflow")

TOL = dict(atol=1e-4, rtol=1e-4)


def _tokens(rng: np.random.Generator, batch: int, steps: int, vocab: int, pad: bool = True) -> np.ndarray:
    x = rng.integers(1, vocab, size=(batch, steps)).astype("int32")
    if pad:
        x[0, steps // 2:] = 0  # post-padding
        if batch > 2:
            x[1, :] = 0  # all padding
        if batch > 3:
            x[2, : steps // 3] = 0  # pre-padding
    return x


def _check(sources, inputs_by_len) -> None:
    """Every source form converts once and matches its Keras model (and the reference) at every length."""
    for form, src, live in sources:
        model = keydnn.from_keras(src)
        for inputs in inputs_by_len:
            expected = live(inputs if isinstance(inputs, list) else inputs)
            expected = [np.asarray(e) for e in expected] if isinstance(expected, (list, tuple)) else [
                np.asarray(expected)]
            got = model(*inputs) if isinstance(inputs, list) else model(inputs)
            got = got if isinstance(got, list) else [got]
            ref = run_reference(model.graph, *(inputs if isinstance(inputs, list) else [inputs]))
            assert len(got) == len(expected), form
            for g, r, e in zip(got, ref, expected):
                np.testing.assert_allclose(g, e, **TOL, err_msg=f"{form} at shape {g.shape}")
                np.testing.assert_allclose(r, e, **TOL, err_msg=f"reference, {form}")


def _text_classifier(cell: str, **kw):
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None,), dtype="int32")
        x = L.Embedding(40, 6, mask_zero=True)(inp)
        x = getattr(L, cell)(5, **kw)(x)
        return k.Model(inp, L.Dense(3)(x))

    return build


@pytest.mark.parametrize("cell,kw", [
    ("SimpleRNN", {}),
    ("SimpleRNN", {"activation": "relu", "use_bias": False}),
    ("LSTM", {}),
    ("LSTM", {"go_backwards": True, "unroll": False}),
    ("LSTM", {"recurrent_activation": "hard_sigmoid", "activation": "softsign"}),
    ("GRU", {}),
    ("GRU", {"reset_after": False}),
    ("GRU", {"go_backwards": True, "dropout": 0.3, "recurrent_dropout": 0.2}),
])
def test_masked_text_classifier(keras_sources, cell, kw) -> None:
    name = f"txt_{cell}_" + "_".join(f"{k}{v}" for k, v in sorted(kw.items()))
    sources = keras_sources(name, _text_classifier(cell, **kw))
    rng = np.random.default_rng(1)
    _check(sources, [_tokens(rng, 4, 9, 40), _tokens(rng, 4, 5, 40)])


@pytest.mark.parametrize("cell", ["SimpleRNN", "LSTM", "GRU"])
def test_return_sequences_stack_variable_length(keras_sources, cell) -> None:
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None, 3))
        x = getattr(L, cell)(4, return_sequences=True)(inp)
        x = getattr(L, cell)(6, return_sequences=True, go_backwards=True)(x)
        return k.Model(inp, L.TimeDistributed(L.Dense(2))(x))

    sources = keras_sources(f"seq_{cell}", build)
    rng = np.random.default_rng(2)
    _check(sources, [rng.standard_normal((2, 7, 3)).astype("float32"),
                     rng.standard_normal((1, 3, 3)).astype("float32")])


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "mul", "ave", None])
def test_bidirectional_merge_modes_masked(keras_sources, merge_mode) -> None:
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None,), dtype="int32")
        x = L.Embedding(30, 4, mask_zero=True)(inp)
        y = L.Bidirectional(L.GRU(3, return_sequences=True), merge_mode=merge_mode)(x)
        return k.Model(inp, y)

    sources = keras_sources(f"bidi_{merge_mode}", build)
    rng = np.random.default_rng(3)
    _check(sources, [_tokens(rng, 4, 6, 30), _tokens(rng, 4, 8, 30)])


def test_bidirectional_backward_layer_and_states(keras_sources) -> None:
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None, 3))
        fwd = L.LSTM(4, return_state=True)
        bwd = L.LSTM(4, return_state=True, go_backwards=True, activation="relu")
        outs = L.Bidirectional(fwd, backward_layer=bwd)(inp)
        return k.Model(inp, outs)

    sources = keras_sources("bidi_states", build)
    rng = np.random.default_rng(4)
    _check(sources, [rng.standard_normal((2, 5, 3)).astype("float32")])


def test_encoder_decoder_with_states(keras_sources) -> None:
    def build(k):
        L = k.layers
        enc_in = k.Input(shape=(None,), dtype="int32")
        dec_in = k.Input(shape=(None,), dtype="int32")
        e = L.Embedding(25, 6, mask_zero=True)(enc_in)
        _, h, c = L.LSTM(8, return_state=True)(e)
        d = L.Embedding(25, 6)(dec_in)
        y, h2, c2 = L.LSTM(8, return_sequences=True, return_state=True)(d, initial_state=[h, c])
        y = L.TimeDistributed(L.Dense(25))(y)
        return k.Model([enc_in, dec_in], [y, h2, c2])

    sources = keras_sources("encdec", build)
    rng = np.random.default_rng(5)
    inputs = [[_tokens(rng, 4, 7, 25), _tokens(rng, 4, 5, 25, pad=False)],
              [_tokens(rng, 4, 4, 25), _tokens(rng, 4, 9, 25, pad=False)]]
    _check(sources, inputs)


def test_masking_repeat_vector_autoencoder(keras_sources) -> None:
    def build(k):
        L = k.layers
        m = k.Sequential([k.Input(shape=(6, 2)), L.Masking(mask_value=0.0), L.GRU(4), L.RepeatVector(6),
                          L.SimpleRNN(3, return_sequences=True), L.TimeDistributed(L.Dense(2))])
        return m

    sources = keras_sources("masking_ae", build)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 6, 2)).astype("float32")
    x[0, 4:] = 0.0
    x[1, :] = 0.0
    _check(sources, [x])


def test_one_conversion_runs_any_length() -> None:
    import tensorflow as tf

    L = tf.keras.layers
    inp = tf.keras.Input(shape=(None, 3))
    live = tf.keras.Model(inp, L.LSTM(4)(inp))
    model = keydnn.from_keras(live)
    assert str(model.graph.inputs[0].type) == "f32[N,T,3]"
    rng = np.random.default_rng(7)
    for steps in (1, 2, 11, 40):
        x = rng.standard_normal((2, steps, 3)).astype("float32")
        np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL)


def test_embedding_out_of_range_is_a_clear_error() -> None:
    import tensorflow as tf

    inp = tf.keras.Input(shape=(None,), dtype="int32")
    live = tf.keras.Model(inp, tf.keras.layers.Embedding(10, 2)(inp))
    model = keydnn.from_keras(live)
    np.testing.assert_allclose(model(np.array([[1, 9]], dtype="int64")), np.asarray(live(np.array([[1, 9]]))))
    with pytest.raises(ValueError, match="outside the table"):
        model(np.array([[1, 10]], dtype="int32"))
    with pytest.raises(ValueError, match="integer array"):
        model(np.array([[1.0, 2.0]], dtype="float32"))


def test_float_keras_input_takes_integer_ids() -> None:
    import tensorflow as tf

    live = tf.keras.Sequential([tf.keras.Input(shape=(5,)), tf.keras.layers.Embedding(10, 3),
                                tf.keras.layers.SimpleRNN(2)])
    model = keydnn.from_keras(live)
    x = np.array([[1, 2, 3, 4, 9]], dtype="int32")
    np.testing.assert_allclose(model(x), np.asarray(live(x)), **TOL)


def test_refusals_name_the_field() -> None:
    import tensorflow as tf

    L = tf.keras.layers
    stateful = tf.keras.Sequential([tf.keras.Input(batch_shape=(1, 4, 2)), L.LSTM(3, stateful=True)])
    with pytest.raises(keydnn.KerasInteropError, match="stateful"):
        keydnn.from_keras(stateful)
    td = tf.keras.Sequential([tf.keras.Input(shape=(3, 4, 2)), L.TimeDistributed(L.LSTM(2))])
    with pytest.raises(keydnn.KerasInteropError, match="TimeDistributed over 'LSTM'"):
        keydnn.from_keras(td)


def test_artifact_round_trip(tmp_path) -> None:
    import tensorflow as tf

    L = tf.keras.layers
    inp = tf.keras.Input(shape=(None,), dtype="int32")
    x = L.Embedding(20, 4, mask_zero=True)(inp)
    x = L.Bidirectional(L.LSTM(3, return_sequences=True))(x)
    live = tf.keras.Model(inp, L.GRU(2)(x))
    model = keydnn.from_keras(live)
    path = model.save(tmp_path / "seq.json")
    again = keydnn.load(path)
    assert again.graph == model.graph
    x = _tokens(np.random.default_rng(8), 4, 6, 20)
    np.testing.assert_allclose(again(x), np.asarray(live(x)), **TOL)


@pytest.mark.parametrize("backwards", [False, True])
def test_generic_rnn_wrapper_and_stacked_cells(keras_sources, backwards) -> None:
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None,), dtype="int32")
        x = L.Embedding(30, 4, mask_zero=True)(inp)
        x = L.RNN(L.GRUCell(4, reset_after=False), return_sequences=True, go_backwards=backwards)(x)
        x = L.RNN([L.SimpleRNNCell(3), L.LSTMCell(5), L.LSTMCell(2)], go_backwards=backwards)(x)
        return k.Model(inp, x)

    sources = keras_sources(f"rnn_wrapper_{backwards}", build)
    rng = np.random.default_rng(9)
    _check(sources, [_tokens(rng, 4, 6, 30), _tokens(rng, 4, 3, 30)])


def test_generic_rnn_wrapper_states(keras_sources) -> None:
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None, 3))
        h0 = k.Input(shape=(4,))
        outs = L.RNN(L.SimpleRNNCell(4), return_state=True)(inp, initial_state=[h0])
        return k.Model([inp, h0], outs)

    sources = keras_sources("rnn_wrapper_states", build)
    rng = np.random.default_rng(10)
    _check(sources, [[rng.standard_normal((2, 5, 3)).astype("float32"), rng.standard_normal((2, 4)).astype("float32")]])


@pytest.mark.filterwarnings("error::keydnn.errors.SlowPathWarning")  # generated code, not per-op
def test_time_distributed_folds_time_into_the_batch(keras_sources) -> None:
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None, 8, 8, 1))
        x = L.TimeDistributed(L.Conv2D(3, 3, activation="linear"))(inp)
        x = L.TimeDistributed(L.MaxPooling2D(2))(x)
        x = L.TimeDistributed(L.Flatten())(x)
        x = L.TimeDistributed(L.BatchNormalization())(x)
        x = L.LSTM(4)(x)
        return k.Model(inp, x)

    sources = keras_sources("td_conv", build)
    rng = np.random.default_rng(11)
    _check(sources, [rng.standard_normal((2, 3, 8, 8, 1)).astype("float32"),
                     rng.standard_normal((3, 5, 8, 8, 1)).astype("float32")])


@pytest.mark.filterwarnings("error::keydnn.errors.SlowPathWarning")  # generated code, not per-op
def test_conv_lstm_2d_and_1d(keras_sources) -> None:
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None, 6, 5, 2))
        x = L.ConvLSTM2D(3, (3, 2), padding="same", return_sequences=True)(inp)
        x = L.ConvLSTM2D(2, 3, strides=1, go_backwards=True, activation="relu")(x)
        return k.Model(inp, x)

    def build1(k):
        L = k.layers
        inp = k.Input(shape=(None, 7, 2))
        y, h, c = L.ConvLSTM1D(3, 3, strides=2, return_sequences=True, return_state=True)(inp)
        return k.Model(inp, [y, h, c])

    rng = np.random.default_rng(12)
    _check(keras_sources("conv_lstm2d", build), [rng.standard_normal((2, 4, 6, 5, 2)).astype("float32"),
                                                  rng.standard_normal((1, 2, 6, 5, 2)).astype("float32")])
    _check(keras_sources("conv_lstm1d", build1), [rng.standard_normal((2, 4, 7, 2)).astype("float32"),
                                                   rng.standard_normal((3, 6, 7, 2)).astype("float32")])


def test_functional_masking_and_dense_between(keras_sources) -> None:
    def build(k):
        L = k.layers
        inp = k.Input(shape=(None, 3))
        x = L.Masking(mask_value=-1.0)(inp)
        x = L.Dense(4)(x)  # passes the mask on
        x = L.Dropout(0.2)(x)
        x = L.SimpleRNN(3, return_sequences=True)(x)
        return k.Model(inp, L.LSTM(2)(x))

    sources = keras_sources("functional_masking", build)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 5, 3)).astype("float32")
    x[0, 3:] = -1.0
    x[1, :] = -1.0
    x[2, 0] = -1.0
    _check(sources, [x, x[:, :4].copy()])


def test_keras2_time_major_and_bad_activation_are_refused() -> None:
    tf_keras = pytest.importorskip("tf_keras")
    L = tf_keras.layers
    tm = tf_keras.Sequential([tf_keras.Input(shape=(4, 2)), L.LSTM(3, time_major=True)])
    with pytest.raises(keydnn.KerasInteropError, match="time_major"):
        keydnn.from_keras(tm)
    bad = tf_keras.Sequential([tf_keras.Input(shape=(4, 2)), L.GRU(3, activation="softmax")])
    with pytest.raises(keydnn.KerasInteropError, match="unsupported activation 'softmax'"):
        keydnn.from_keras(bad)


def test_conv1d_then_lstm_keeps_the_time_axis(keras_sources) -> None:
    """canonicalize-layout runs the Conv1D channels-first, and hands the LSTM its (batch, time, features) order."""
    def build(k):
        L = k.layers
        return k.Sequential([k.Input(shape=(12, 3)), L.Conv1D(4, 3, padding="same"), L.MaxPooling1D(2),
                             L.LSTM(5, return_sequences=True), L.Conv1D(2, 2), L.GlobalMaxPooling1D()])

    sources = keras_sources("conv1d_lstm", build)
    _check(sources, [np.random.default_rng(14).standard_normal((2, 12, 3)).astype("float32")])
    graph = keydnn.from_keras(sources[0][1]).graph
    rnn = next(n for n in graph.nodes if n.op.kind == "rnn")
    assert graph.value_types()[rnn.inputs[0]].shape == ("N", 6, 20)
