"""Single-thread CPU time of a ConvLSTM2D model and a TimeDistributed(Conv2D) model (issue 17), before and after
``fold_time`` / ``unfold_time`` and ``conv_lstm`` got code generators, measured with ``time.thread_time`` in one
process (run by hand, not in CI). "before": the per-op kernels (the path these graphs took) on the IR as it was
converted then (``eliminate-identity`` without its fold/unfold rules: a transpose pair between consecutive
TimeDistributed layers); "ops": the per-op kernels on today's IR; "codegen": generated code (the default now).

keydnn runs with ``NUMBA_NUM_THREADS=1`` and one thread per call, so the CPU time of the calling thread is
the whole cost of a call (see ``seq_cputime.py`` for why thread CPU time on a shared machine). Prints one line
per (model, batch): best-of-rounds ms per call, and the largest difference from Keras.

    python benchmarks/fold_cputime.py [--rounds 7] [--batches 1]
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from seq_cputime import cpu_ms  # noqa: E402


def models(keras) -> dict:
    """name -> (model, per-sample input shape)."""
    L = keras.layers
    inp = keras.Input(shape=(10, 32, 32, 3))
    x = L.ConvLSTM2D(16, 3, padding="same", return_sequences=True)(inp)
    x = L.ConvLSTM2D(16, 3, padding="same")(x)
    conv_lstm = keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x)), name="convlstm2d")
    inp = keras.Input(shape=(8, 32, 32, 3))
    x = L.TimeDistributed(L.Conv2D(16, 3, activation="relu"))(inp)
    x = L.TimeDistributed(L.MaxPooling2D(2))(x)
    x = L.TimeDistributed(L.Conv2D(32, 3, activation="relu"))(x)
    x = L.TimeDistributed(L.GlobalAveragePooling2D())(x)
    td = keras.Model(inp, L.Dense(5)(L.LSTM(32)(x)), name="td_conv2d")
    return {"convlstm2d": (conv_lstm, (10, 32, 32, 3)), "td_conv2d": (td, (8, 32, 32, 3))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", default="1")
    args = parser.parse_args()
    import keras

    import keydnn
    from keydnn.backends.numba_cpu.modes import compile_graph

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    from keydnn.ir.passes import eliminate

    for name, (model, shape) in models(keras).items():
        km = keydnn.from_keras(model, allow_non_linear_activation=True)
        rules = eliminate._unfolded_rows, eliminate._first_sequence
        eliminate._unfolded_rows = eliminate._first_sequence = lambda node, producers: None
        try:
            old = keydnn.from_keras(model, allow_non_linear_activation=True)
        finally:
            eliminate._unfolded_rows, eliminate._first_sequence = rules
        runners = {"before": compile_graph(old.graph, mode="ops"), "ops": compile_graph(km.graph, mode="ops"),
                   "codegen": compile_graph(km.graph, mode="codegen")}
        for batch in (int(b) for b in args.batches.split(",")):
            x = rng.standard_normal((batch,) + shape).astype("f4")
            want = np.asarray(model(x))
            errs = {m: float(np.abs(np.asarray(fn(x)[0]) - want).max()) for m, fn in runners.items()}
            times = {m: cpu_ms(fn, x, args.rounds) for m, fn in runners.items()}
            cells = "  ".join(f"{m} {times[m]:8.3f} ms (err {errs[m]:.1e})" for m in runners)
            print(f"{name:11s} batch {batch:2d}: {cells}  before/codegen {times['before'] / times['codegen']:.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
