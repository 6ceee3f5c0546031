"""CPU benchmark: keydnn (numba-cpu) against TensorFlow and ONNX Runtime, run by hand (not in CI).

    pip install -e ".[bench]"          # onnxruntime, tf2onnx, tensorflow-cpu
    python benchmarks/cpu_bench.py     # prints the table; --readme writes it into README.md

Models (random weights, fixed seeds): the seed CNN (1x28x28 channels_first),
a channels_last CIFAR-style CNN (32x32x3), an MLP (784-512-512-10), a small
channels_last Functional ResNet (32x32x3, three residual stages), a small
depthwise-separable CNN (64x64x3, MobileNet-style), an LSTM text classifier
(Embedding 20000x128, LSTM 128, Dense; length 100) and a GRU forecaster
(64 steps x 8 features, GRU 64 x2), at batch 1 and 64. The
last two are not in issue 4's list: they check that the speed holds for other
shapes (strides, 8x8 images, residual adds, depthwise filters). Every framework runs the same Keras model:

* keydnn: ``keydnn.from_keras(model, allow_non_linear_activation=True)``
  (default pass pipeline, default numba-cpu mode: generated code);
* TensorFlow: the model call wrapped in ``tf.function`` with a fixed input signature, with and without
  ``jit_compile=True`` (XLA), whichever is faster on this CPU for the row (XLA is the only way TensorFlow
  runs channels_first convolutions where its oneDNN kernels are off, e.g. on AVX2-only CPUs);
* ONNX Runtime: the same ``tf.function`` exported with
  ``tf2onnx.convert.from_function`` (opset 17), ``SessionOptions`` with
  ``intra_op_num_threads=2`` (``inter_op_num_threads=1``).

Latency is the median of many single calls, measured in alternating rounds
(keydnn, ORT, TF, keydnn, ...) so that background load affects all three
alike. Cold start runs a fresh interpreter that imports keydnn, loads the
saved artifact and runs one inference, with a warm compile cache (compiled
before) and a cold one (an empty ``KEYDNN_CACHE_DIR``), reporting wall time
and the process's peak RSS (``VmHWM``: ``getrusage``'s ``ru_maxrss`` would count the
benchmark's own memory, inherited across the fork).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BATCHES = (1, 64)


from bench_models import (  # noqa: E402  (re-exported: ort_ratio.py and seq_cputime.py import them from here)
    SAMPLE_SHAPES, build_models, mobilenet, resnet, sample_input, sequence_models,
)


def tf_runner(model, x: np.ndarray | None = None, seconds: float = 0.3) -> tuple[Callable, object, str]:
    """TensorFlow's fastest way to run ``model`` on this CPU, the graph function ORT exports, and its label.

    ``tf.function`` and ``tf.function(jit_compile=True)`` (XLA) both run where
    they can, and the faster on ``x`` is kept. Without oneDNN kernels (the
    default on CPUs without AVX-512 VNNI, or ``TF_ENABLE_ONEDNN_OPTS=0``)
    TensorFlow refuses channels_first convolutions in a plain graph; XLA runs
    them on every CPU.
    """
    import tensorflow as tf

    spec = (tf.TensorSpec((None,) + tuple(model.inputs[0].shape[1:]), model.inputs[0].dtype, name="x"),)
    fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
    xla = tf.function(lambda x: model(x, training=False), input_signature=spec, jit_compile=True)
    candidates = {"tf.function": lambda x: fn(x).numpy(), "XLA": lambda x: xla(x).numpy()}
    if x is not None:
        usable = {}
        for label, call in candidates.items():
            try:
                call(x)
            except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
                continue  # refused on this CPU
            usable[label] = call
        if not usable:
            raise SystemExit(f"TensorFlow cannot run {model.name} on this CPU, neither as a graph nor through XLA")
        times = measure(usable, x, seconds) if len(usable) > 1 else {next(iter(usable)): 0.0}
        label = min(times, key=times.get)
        return usable[label], (fn, spec), label
    return candidates["tf.function"], (fn, spec), "tf.function"


def ort_runner(fn_spec) -> Callable:
    import onnxruntime as ort
    import tf2onnx

    fn, spec = fn_spec
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fixed = _captured_feeds(fn, spec, [i.name for i in sess.get_inputs()[1:]])
    return lambda x: sess.run(None, {name: x, **fixed})[0]


def _captured_feeds(fn, spec, names: list[str]) -> dict[str, np.ndarray]:
    """Values of the graph inputs tf2onnx made of captured tensors (EfficientNet's Normalization constants
    come out as inputs ``.../Sub/y:0``): the value each placeholder captures, fed with every call."""
    if not names:
        return {}
    graph = fn.get_concrete_function(*spec).graph
    inner = {placeholder.name: external for external, placeholder in graph.captures}
    missing = [n for n in names if n not in inner]
    if missing:
        raise SystemExit(f"ONNX inputs {missing} are neither the model input nor captured tensors")
    return {n: np.asarray(inner[n].numpy()) for n in names}


def measure(runners: dict[str, Callable], x: np.ndarray, seconds: float) -> dict[str, float]:
    """Median latency (ms) of each runner, in many short alternating rounds (a burst of load from outside
    the process then hits every runner alike instead of one runner's only round)."""
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for f in runners.values():  # warm up
        for _ in range(5):
            f(x)
    rounds = 15
    per_round = seconds / rounds / len(runners)
    for _ in range(rounds):
        for name, f in runners.items():
            end = time.perf_counter() + per_round
            while True:
                t = time.perf_counter()
                f(x)
                dt = time.perf_counter() - t
                samples[name].append(dt)
                if t + dt > end and len(samples[name]) >= 5:
                    break
    return {k: float(np.median(v)) * 1e3 for k, v in samples.items()}


_PEAK = """
def peak_mib():
    # VmHWM: the high-water mark of this process image (ru_maxrss would include the pre-exec parent)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024.0
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
"""

_CHILD = _PEAK + """
import sys, time
t0 = time.perf_counter()
import numpy as np
import keydnn
m = keydnn.load(sys.argv[1])
x = np.load(sys.argv[2])
y = m(x)
t1 = time.perf_counter()
print("RESULT", t1 - t0, peak_mib())
"""

_CHILD_ORT = _PEAK + """
import sys, time
t0 = time.perf_counter()
import numpy as np
import onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = np.load(sys.argv[2])
y = s.run(None, {s.get_inputs()[0].name: x})
t1 = time.perf_counter()
print("RESULT", t1 - t0, peak_mib())
"""


def cold_start(artifact: Path, x_path: Path, cache_dir: Path, script: str = _CHILD, runs: int = 3) -> tuple[float, float]:
    """(median seconds, max peak RSS MiB) of a fresh interpreter loading the artifact and running once."""
    env = {**os.environ, "KEYDNN_CACHE_DIR": str(cache_dir)}
    times, rss = [], []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", script, str(artifact), str(x_path)], env=env,
                             capture_output=True, text=True, check=True).stdout
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT"))
        _, t, r = line.split()
        times.append(float(t))
        rss.append(float(r))
    return float(np.median(times)), max(rss)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            names = [ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run(seconds: float, cold_runs: int, only: tuple[str, ...] = (), applications: bool = True) -> tuple[str, dict]:
    import keydnn
    import numba
    import onnxruntime
    import tensorflow as tf

    from app_models import APP_BATCHES, application_models, fma_peak_gflops, graph_flops

    models = build_models()
    apps = application_models(tf.keras) if applications else {}
    models.update(apps)
    only = select(only, models)
    rows, data = [], {"machine": machine(), "latency": {}, "cold": {}}
    tmp = Path(tempfile.mkdtemp(prefix="keydnn-bench-"))
    artifacts = {}
    for name, model in models.items():
        if only and name not in only and not (name == "CIFAR CNN" and cold_runs):  # also the cold-start model
            continue
        km = keydnn.from_keras(model, allow_non_linear_activation=True)
        ort_call = None
        artifacts[name] = km
        if name in apps:  # cold compile: a fresh process, an empty compile cache, one inference
            art, xin = tmp / f"{_key(name)}.json", tmp / f"{_key(name)}.x.npy"
            km.save(art)  # weights of 8 MiB or more go into a memory-mapped sidecar (Model.save's default)
            np.save(xin, sample_input(name, model, 1, np.random.default_rng(0)))
            cache = tmp / f"cache-{_key(name)}"
            cold = cold_start(art, xin, cache, runs=1)
            warm = cold_start(art, xin, cache, runs=max(1, cold_runs))  # a fresh process, the compiled code cached
            data.setdefault("compile", {})[name] = (*cold, *warm)
            print(f"{name}: cold compile + first call {cold[0]:.1f} s, peak RSS {cold[1]:.0f} MiB; warm start "
                  f"{warm[0]:.2f} s, peak RSS {warm[1]:.0f} MiB", flush=True)
        for batch in (APP_BATCHES if name in apps else BATCHES):
            x = sample_input(name, model, batch, np.random.default_rng(batch))
            tf_call, fn_spec, tf_how = tf_runner(model, x)
            data.setdefault("tensorflow_mode", {})[f"{name}/{batch}"] = tf_how
            ort_call = ort_call or ort_runner(fn_spec)
            ref = tf_call(x)
            for who, f in (("keydnn", km), ("onnxruntime", ort_call)):
                err = float(np.abs(np.asarray(f(x)) - ref).max())
                if err > 1e-4:
                    raise AssertionError(f"{who} disagrees with TensorFlow on {name} batch {batch}: {err:.2e}")
            t = measure({"keydnn": km, "onnxruntime": ort_call, "tensorflow": tf_call}, x, seconds)
            data["latency"][f"{name}/{batch}"] = t
            if name in apps:
                data.setdefault("gflops", {})[f"{name}/{batch}"] = graph_flops(km.graph, batch) / (t["keydnn"] * 1e6)
            rows.append((name, batch, t))
            print(f"{name:10s} batch {batch:3d}: keydnn {t['keydnn']:.4f} ms  ORT {t['onnxruntime']:.4f} ms  "
                  f"TF {t['tensorflow']:.4f} ms ({tf_how})", flush=True)

    from keydnn.backends.numba_cpu.codegen.target import current_target

    tier = current_target().name + (" (forced)" if os.environ.get("KEYDNN_CPU_TARGET", "native") != "native" else "")
    data["target"] = tier
    data["fma_peak_gflops"] = fma_peak_gflops(current_target().lanes("float32"))
    versions = (f"keydnn {keydnn.__version__} (code-generation tier {tier}), numba {numba.__version__}, "
                f"onnxruntime {onnxruntime.__version__}, TensorFlow {tf.__version__}")
    if cold_runs <= 0:  # --cold-runs 0: latency only
        return render(rows, data, versions), data
    # cold start of the CIFAR CNN: a fresh process loads the artifact and runs one inference
    cifar = artifacts["CIFAR CNN"]
    art = tmp / "cifar.json"
    cifar.save(art)
    x1 = tmp / "x1.npy"
    np.save(x1, np.zeros((1, 32, 32, 3), np.float32))
    warm_dir = tmp / "cache-warm"
    cold_start(art, x1, warm_dir, runs=1)  # fills the cache
    warm = cold_start(art, x1, warm_dir, runs=cold_runs)
    cold_times, cold_rss = [], []
    for i in range(cold_runs):
        t, r = cold_start(art, x1, tmp / f"cache-cold-{i}", runs=1)
        cold_times.append(t)
        cold_rss.append(r)
    cold = (float(np.median(cold_times)), max(cold_rss))
    import tf2onnx

    onnx_path = tmp / "cifar.onnx"
    fn, spec = tf_runner(models["CIFAR CNN"])[1]
    tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, output_path=str(onnx_path))
    ort_cold = cold_start(onnx_path, x1, warm_dir, script=_CHILD_ORT, runs=cold_runs)
    data["cold"] = {"keydnn warm cache": warm, "keydnn cold cache": cold, "onnxruntime": ort_cold}
    return render(rows, data, versions), data


def _tf_modes(data: dict) -> str:
    modes = data.get("tensorflow_mode", {})
    xla = sorted(k for k, v in modes.items() if v == "XLA")
    return f"XLA for {', '.join(xla)}" if xla else "tf.function for every row"


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def select(only: tuple[str, ...], models: dict) -> tuple[str, ...]:
    """The model names ``only`` asks for: full names, or any unambiguous prefix ignoring case and punctuation
    (``seed``, ``cifar``, ``resnet``, ``mobilenet``)."""
    chosen = []
    for want in only:
        hits = [name for name in models if _key(name) == _key(want)] or \
               [name for name in models if _key(name).startswith(_key(want))]
        if len(hits) != 1:
            what = "matches several models" if hits else "is not a model"
            raise SystemExit(f"--models: {want!r} {what}; choose from {', '.join(models)}")
        chosen.append(hits[0])
    return tuple(chosen)


def render(rows, data, versions: str) -> str:
    lines = [
        f"Measured by `python benchmarks/cpu_bench.py` on this project's 2-core machine ({data['machine']}); "
        f"{versions}. Median latency per call in ms (lower is better); ratios are keydnn's time over the "
        "other's (below 1: keydnn is faster). ONNX Runtime uses 2 intra-op threads; keydnn uses up to 2 threads. "
        f"TensorFlow: the faster of tf.function and XLA per row ({_tf_modes(data)}).",
        "",
        "| model | batch | keydnn | ONNX Runtime | TensorFlow | keydnn / ORT | keydnn / TF |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, batch, t in rows:
        k, o, f = t["keydnn"], t["onnxruntime"], t["tensorflow"]
        lines.append(f"| {name} | {batch} | {k:.3f} | {o:.3f} | {f:.3f} | {k / o:.2f} | {k / f:.2f} |")
    if data.get("compile"):
        peak = data.get("fma_peak_gflops")
        lines += [
            "",
            "Application models (224x224x3, random weights): cold compile (a fresh process with an empty compile "
            "cache imports keydnn, loads the artifact and runs once; wall time, peak RSS), warm start (the same "
            "in a fresh process whose compile cache holds the model) and keydnn's GFLOP/s per row"
            + (f" (nominal FMA peak of this machine: {peak:.0f} GFLOP/s)" if peak else "") + ":",
            "",
            "| model | cold compile (s) | peak RSS (MiB) | warm start (s) | warm RSS (MiB) | GFLOP/s batch 1 "
            "| GFLOP/s batch 8 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, (t, r, *warm) in data["compile"].items():
            g = data.get("gflops", {})
            wt, wr = warm if warm else (float("nan"), float("nan"))
            lines.append(f"| {name} | {t:.1f} | {r:.0f} | {wt:.2f} | {wr:.0f} | "
                         f"{g.get(f'{name}/1', float('nan')):.1f} | {g.get(f'{name}/8', float('nan')):.1f} |")
    cold = data["cold"]
    if not cold:
        return "\n".join(lines)
    lines += [
        "",
        "Cold start of the CIFAR CNN (a fresh `python` process: import, load the artifact, one batch-1 inference; "
        "median wall time, peak RSS):",
        "",
        "| | time (s) | peak RSS (MiB) |",
        "|---|---:|---:|",
    ]
    for label, (t, r) in cold.items():
        lines.append(f"| {label} | {t:.2f} | {r:.0f} |")
    return "\n".join(lines)


def write_readme(table: str) -> None:
    text = README.read_text()
    new = re.sub(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", lambda m: m.group(1) + table + "\n" + m.group(2),
                 text, flags=re.S)
    README.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per (model, batch)")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh processes per cold-start row (0: skip)")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--models", default="", help="comma-separated subset of the models (default: all)")
    parser.add_argument("--no-applications", action="store_true",
                        help="skip the keras.applications models (MobileNetV2, ResNet50, EfficientNetB0, "
                             "NASNetMobile at 224x224)")
    parser.add_argument("--target", choices=("native", "avx512", "avx2", "generic"), default=None,
                        help="keydnn's code-generation tier (KEYDNN_CPU_TARGET; default: the widest this CPU has)")
    args = parser.parse_args()
    if args.target:
        os.environ["KEYDNN_CPU_TARGET"] = args.target  # before keydnn or numba is imported
    only = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if (only or args.cold_runs <= 0) and args.readme:
        parser.error("--readme writes the whole table: run every model and the cold start")
    table, data = run(args.seconds, args.cold_runs, only, applications=not args.no_applications)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1))
    if args.readme:
        write_readme(table)


if __name__ == "__main__":
    main()
