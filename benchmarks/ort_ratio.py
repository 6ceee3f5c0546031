"""keydnn / ONNX Runtime latency ratios of the CNN and MLP rows, robust to a shared, noisy machine (run by hand).

    python benchmarks/ort_ratio.py [--only "MLP,ResNet-8"] [--rounds 9] [--profile]
    KEYDNN_CPU_TARGET=avx2 python benchmarks/ort_ratio.py     # the forced AVX2 tier

Two measurements per row, both in one process with keydnn and ORT interleaved:

* wall: 2 threads each (keydnn's default pool; ORT ``intra_op_num_threads=2``), several rounds, each round a
  burst of keydnn calls then a burst of ORT calls; the ratio of each round's medians, then the median over rounds
  (a burst of load from other processes then moves one round, not the result);
* cpu: one thread each (keydnn ``threads=1``, ORT ``intra_op_num_threads=1``), timed with
  ``time.thread_time`` (CPU time of the calling thread: what other processes' load barely moves).

``--profile`` prints keydnn's per-stage profile (``Model.profile``) for each row, to see which node dominates.
The models are ``cpu_bench.build_models``'s; nothing here is specific to one of them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

DEFAULT = ("seed CNN", "CIFAR CNN", "MLP", "ResNet-8", "MobileNet-style", "ViT encoder", "U-Net 64")


def _burst(f, x, seconds: float, clock) -> list[float]:
    out = []
    end = time.perf_counter() + seconds
    while True:
        t = clock()
        f(x)
        out.append(clock() - t)
        if time.perf_counter() > end and len(out) >= 5:
            return out


def ratio(k, o, x, rounds: int, seconds: float, clock) -> tuple[float, float, float]:
    """(median over rounds of median(keydnn)/median(ort), keydnn ms, ort ms)."""
    for _ in range(3):
        k(x)
        o(x)
    rs, ks, os_ = [], [], []
    for i in range(rounds):
        pair = [(k, ks), (o, os_)] if i % 2 == 0 else [(o, os_), (k, ks)]
        med = {}
        for f, acc in pair:
            m = float(np.median(_burst(f, x, seconds, clock)))
            acc.append(m)
            med[id(acc)] = m
        rs.append(med[id(ks)] / med[id(os_)])
    return float(np.median(rs)), float(np.median(ks)) * 1e3, float(np.median(os_)) * 1e3


def ort_session(fn_spec, threads: int):
    import onnxruntime as ort
    import tf2onnx

    fn, spec = fn_spec
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(DEFAULT))
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--seconds", type=float, default=0.15, help="per burst")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-cpu", action="store_true", help="skip the single-thread thread_time ratios")
    args = ap.parse_args()
    import tensorflow as tf

    import cpu_bench
    import keydnn
    from keydnn.backends.numba_cpu.codegen.target import current_target

    models = cpu_bench.build_models()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    print(f"tier {current_target().name}; noisy shared machine (2 cores, other agents)")
    print(f"{'model':16s} {'b':>3s} {'k ms':>8s} {'ort ms':>8s} {'wall':>6s} | "
          f"{'k1 ms':>8s} {'ort1 ms':>8s} {'cpu':>6s}")
    walls, cpus = [], []
    for name in names:
        model = models[name]
        spec = (tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype, name="x"),)
        fn = tf.function(lambda x, m=model: m(x, training=False), input_signature=spec)
        o2, o1 = ort_session((fn, spec), 2), ort_session((fn, spec), 1)
        k2 = keydnn.from_keras(model, allow_non_linear_activation=True)
        k1 = keydnn.from_keras(model, allow_non_linear_activation=True, threads=1)
        for b in (int(v) for v in args.batches.split(",")):
            x = cpu_bench.sample_input(name, model, b, np.random.default_rng(b))
            err = float(np.abs(np.asarray(k2(x)) - o2(x)).max())
            if err > 1e-4:
                raise AssertionError(f"keydnn disagrees with ORT on {name} batch {b}: {err:.2e}")
            r, km, om = ratio(k2, o2, x, args.rounds, args.seconds, time.perf_counter)
            walls.append(r)
            line = f"{name:16s} {b:3d} {km:8.3f} {om:8.3f} {r:6.2f}"
            if not args.no_cpu:
                r1, km1, om1 = ratio(k1, o1, x, max(3, args.rounds // 2), args.seconds, time.thread_time)
                cpus.append(r1)
                line += f" | {km1:8.3f} {om1:8.3f} {r1:6.2f}"
            print(line, flush=True)
            if args.profile:
                from keydnn.introspect import profile_text

                print(profile_text(k2.profile(batch=b), title=f"  profile {name} b{b} (2 threads)"))
    gm = float(np.exp(np.mean(np.log(walls))))
    print(f"wall ratio geomean {gm:.2f}, worst {max(walls):.2f}")
    if cpus:
        print(f"cpu ratio geomean {float(np.exp(np.mean(np.log(cpus)))):.2f}, worst {max(cpus):.2f}")


if __name__ == "__main__":
    main()
