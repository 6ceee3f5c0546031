"""Single-thread CPU time of the sequence benchmark rows (issue 17): keydnn's generated code and per-op path
against ONNX Runtime, each on one thread, measured with ``time.thread_time`` (run by hand, not in CI).

On a shared, oversubscribed machine wall-clock latency mostly measures the
other jobs; the CPU time the calling thread spends per call is a steadier A/B
(it still moves with cache contention). keydnn runs with ``NUMBA_NUM_THREADS=1``
and one thread per call (the per-op path's BLAS with ``OPENBLAS_NUM_THREADS=1``),
ONNX Runtime with ``intra_op_num_threads=1``, which runs the graph on the
calling thread. Prints one line per (model, batch): best-of-rounds ms.

    python benchmarks/seq_cputime.py [--rounds 7] [--modes codegen,ops]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def cpu_ms(fn, x: np.ndarray, rounds: int, budget: float = 0.25) -> float:
    """Best over ``rounds`` of the mean thread CPU time per call (ms) of a round of ~``budget`` s."""
    for _ in range(3):
        fn(x)
    t0 = time.thread_time()
    fn(x)
    one = max(time.thread_time() - t0, 1e-5)
    reps = max(2, int(budget / one))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(reps):
            fn(x)
        best = min(best, (time.thread_time() - t0) / reps)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--modes", default="codegen,ops", help="keydnn modes to measure (codegen, ops)")
    args = parser.parse_args()
    import keras
    import onnxruntime as ort
    import tf2onnx

    import keydnn
    from cpu_bench import sample_input, sequence_models, tf_runner

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for name, model in sequence_models(keras).items():
        _, fn_spec, _ = tf_runner(model)
        proto, _ = tf2onnx.convert.from_function(fn_spec[0], input_signature=fn_spec[1], opset=17)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = sess.get_inputs()[0].name
        runners = {"ORT": lambda x: sess.run(None, {feed: x})[0]}
        for mode in args.modes.split(","):
            os.environ["KEYDNN_CPU_MODE"] = mode
            km = keydnn.from_keras(model)
            km._compile()
            runners[f"keydnn {mode}"] = km
        for batch in (1, 64):
            x = sample_input(name, model, batch, rng)
            times = {label: cpu_ms(fn, x, args.rounds) for label, fn in runners.items()}
            cells = "  ".join(f"{k} {v:8.3f}" for k, v in times.items())
            print(f"{name:13s} batch {batch:2d}: {cells}   (ms of thread CPU time per call)", flush=True)


if __name__ == "__main__":
    main()
