"""Warm start of the ``keras.applications`` models, with a breakdown of where the time goes (run by hand).

A warm start is what ``cpu_bench.py`` reports beside each application model's
cold compile: a fresh Python process imports keydnn, loads the saved artifact
and runs one batch-1 inference, with the compiled code already in the compile
cache. Issue 16's target is at most 1.5 s and 400 MiB for each model.

    python benchmarks/warm_start.py                        # build, convert, save, warm the cache, measure
    python benchmarks/warm_start.py --dir /tmp/ws --runs 7 # keep the artifacts and the cache between runs
    python benchmarks/warm_start.py --format inline        # weights as inline base64 (the old default form)
    git archive 7bae071 | tar -x -C /tmp/old               # an older keydnn, to compare with in the same run:
    python benchmarks/warm_start.py --baseline /tmp/old --baseline-format inline

The first run builds MobileNetV2, ResNet50, EfficientNetB0 and NASNetMobile
with ``weights=None`` (``app_models.application_models``: random weights,
randomized BatchNorm statistics; TensorFlow is needed for this step only),
converts and saves them into ``--dir``, and fills the compile cache there
(``--dir``/cache) with one cold process per model. Then, per model, ``--runs``
fresh processes run ``cpu_bench.py``'s own warm-start child (min and median
wall time, peak RSS as ``VmHWM``), and as many instrumented ones time each
phase: the imports, reading the artifact (JSON parse, schema validation,
tensor decoding and checksums, the graph check), building the model, loading
the executable from the compile cache (code generation, the cache lookup and
library load) and the first call, and say whether numba was imported. A
phase's time is the minimum over the runs (the machine is shared, and the
minimum is the least disturbed). ``--baseline SRC`` runs every child a second time
with ``PYTHONPATH=SRC`` (a source tree of another keydnn version, on its own
artifacts in ``--baseline-format``), alternating with the current code, so
that both see the same background load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from cpu_bench import _CHILD, _PEAK, _key, machine  # noqa: E402

#: The models, as named by ``app_models.APPLICATIONS``.
MODELS = ("MobileNetV2", "ResNet50", "EfficientNetB0", "NASNetMobile")

#: Functions the instrumented child times, as (module, attribute, label); a name the code no longer has is skipped,
#: so the breakdown keeps working while the loader changes. Nested phases are reported inside their parent's time.
PROBES = (
    ("keydnn.backends.artifact.io", "read_json_document", "read + parse JSON"),
    ("keydnn.backends.artifact.io", "validate_document", "schema validation"),
    ("keydnn.backends.artifact.io", "read_sidecar", "map sidecar"),
    ("keydnn.backends.artifact.io", "decode_all", "decode tensors + checksums"),
    ("keydnn.backends.artifact.io", "_attach_weights", "attach weights + verify graph"),
    ("keydnn.backends.artifact.io", "sha256_hex", "whole-sidecar checksum"),
    ("keydnn.backends.numba_cpu.runtime.executable", "generate", "generate source"),
    ("keydnn.backends.numba_cpu.runtime.executable", "load_program", "cache lookup + load"),
)

_INSTRUMENTED = _PEAK + """
import importlib, json, sys, time
t0 = time.perf_counter()
phases, rss = {}, {}
def rss_now():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024.0
    return 0.0
def mark(name, start):
    t = time.perf_counter()
    phases[name] = t - start
    rss[name] = rss_now()
    return t
import numpy as np
import keydnn
try:
    from keydnn.loading import model_from_artifact  # what keydnn.load imports
except ImportError:  # an older keydnn (a --baseline): keydnn.load lived in keydnn.api
    from keydnn.api import model_from_artifact
from keydnn.backends.artifact import load_artifact
t = mark("import numpy + keydnn + loader", t0)
nested = {}
def wrap(fn, label):
    def timed(*a, **k):
        s = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            nested[label] = nested.get(label, 0.0) + time.perf_counter() - s
    return timed
probes = json.loads(sys.argv[3])
def install(names):
    for mod, attr, label in probes:
        if mod in names and mod in sys.modules and hasattr(sys.modules[mod], attr):
            setattr(sys.modules[mod], attr, wrap(getattr(sys.modules[mod], attr), label))
install({p[0] for p in probes if p[0].startswith("keydnn.backends.artifact")})
art = load_artifact(sys.argv[1])
t = mark("load artifact", t)
m = model_from_artifact(art)
del art
t = mark("build model", t)
s = time.perf_counter()
importlib.import_module("keydnn.backends.numba_cpu.runtime.executable")
nested["import backend"] = time.perf_counter() - s
install({p[0] for p in probes if p[0].startswith("keydnn.backends.numba_cpu")})
m._compile()
t = mark("executable from cache", t)
x = np.load(sys.argv[2])
y = m(x)
t = mark("first call", t)
print("RESULT", json.dumps({"total": t - t0, "peak": peak_mib(), "phases": phases, "nested": nested, "rss": rss,
                            "numba": "numba" in sys.modules, "llvmlite": "llvmlite" in sys.modules,
                            "keydnn": keydnn.__file__}))
"""


#: Run first in a baseline child: an editable install's import hook would otherwise find this checkout's keydnn
#: before the baseline's source tree on PYTHONPATH.
_BASELINE_PRELUDE = """
import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
"""


def _child(script: str, args: list[str], cache: Path, source: Path | None = None) -> str:
    env = {**os.environ, "KEYDNN_CACHE_DIR": str(cache), "KEYDNN_PROGRESS": "0"}
    if source is not None:  # another keydnn: its source tree first on the path
        env["PYTHONPATH"] = str(source)
        script = _BASELINE_PRELUDE + script
    # run in the cache's folder: ``-c`` puts the working directory first on the path, and a checkout's own
    # ``keydnn/`` there would shadow the baseline's
    proc = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          cwd=cache.parent)
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))[len("RESULT "):]


def prepare(directory: Path, names: tuple[str, ...], fmt: str, source: Path | None = None) -> None:
    """Build, convert and save the models whose artifacts are missing, and warm the compile cache."""
    missing = [n for n in names if not (directory / f"{_key(n)}.{fmt}.json").exists()]
    if missing:
        import tensorflow as tf

        import keydnn
        from app_models import application_models

        t = time.perf_counter()
        models = application_models(tf.keras)
        print(f"built {', '.join(models)} in {time.perf_counter() - t:.1f} s", flush=True)
        for name in missing:
            t = time.perf_counter()
            km = keydnn.from_keras(models[name], allow_non_linear_activation=True, progress=False)
            art = directory / f"{_key(name)}.{fmt}.json"
            save_as(km, art, fmt)
            x = np.random.default_rng(0).standard_normal((1, *models[name].inputs[0].shape[1:])).astype(np.float32)
            np.save(directory / f"{_key(name)}.x.npy", x)
            print(f"{name}: converted and saved ({fmt}) in {time.perf_counter() - t:.1f} s", flush=True)
    for name in names:  # a cold compile where the cache lacks the model (or the backend changed since)
        t = time.perf_counter()
        _child(_CHILD, [str(directory / f"{_key(name)}.{fmt}.json"), str(directory / f"{_key(name)}.x.npy")],
               directory / "cache", source)
        print(f"{name}: cache warm ({time.perf_counter() - t:.1f} s){' for ' + str(source) if source else ''}",
              flush=True)


def save_as(km, path: Path, fmt: str) -> None:
    """Save ``km`` in the requested weight form (``default``: what ``Model.save`` does without options)."""
    if fmt == "default":
        km.save(path)
    else:
        km.save(path, sidecar=(fmt == "sidecar"))


def measure(directory: Path, name: str, configs: list[tuple[str, Path | None]], runs: int) -> list[dict]:
    """One result per (format, source) config; the configs' children alternate run by run."""
    x = str(directory / f"{_key(name)}.x.npy")
    arts = [str(directory / f"{_key(name)}.{fmt}.json") for fmt, _ in configs]
    plain: list[list] = [[] for _ in configs]
    detail: list[list] = [[] for _ in configs]
    for _ in range(runs):
        for i, (art, (_, source)) in enumerate(zip(arts, configs)):
            plain[i].append(_child(_CHILD, [art, x], directory / "cache", source).split())
    for _ in range(runs):
        for i, (art, (_, source)) in enumerate(zip(arts, configs)):
            detail[i].append(json.loads(_child(_INSTRUMENTED, [art, x, json.dumps(PROBES)], directory / "cache",
                                               source)))
    return [_summary(directory, name, fmt, p, d) for (fmt, _), p, d in zip(configs, plain, detail)]


def _summary(directory: Path, name: str, fmt: str, plain: list, detail: list) -> dict:
    times = sorted(float(p[0]) for p in plain)
    phases = {k: min(d["phases"][k] for d in detail) for k in detail[0]["phases"]}
    nested = {k: min(d["nested"].get(k, float("inf")) for d in detail) for k in detail[0]["nested"]}
    size = sum(p.stat().st_size for p in directory.glob(f"{_key(name)}.{fmt}.*"))
    return {"min": times[0], "median": float(np.median(times)), "peak": max(float(p[1]) for p in plain),
            "phases": phases, "nested": nested, "rss": detail[0]["rss"], "numba": any(d["numba"] for d in detail),
            "llvmlite": any(d["llvmlite"] for d in detail), "bytes": size, "keydnn": detail[0]["keydnn"]}


def report(name: str, r: dict) -> str:
    lines = [f"{name} ({r['keydnn']}): warm start min {r['min']:.2f} s, median {r['median']:.2f} s, peak RSS {r['peak']:.0f} MiB "
             f"(artifact files {r['bytes'] / 2**20:.0f} MiB; numba imported: {r['numba']}, llvmlite: {r['llvmlite']})"]
    for k, v in r["phases"].items():
        lines.append(f"    {k:34s} {v * 1e3:8.1f} ms   RSS after {r['rss'][k]:6.0f} MiB")
    for k, v in r["nested"].items():
        lines.append(f"      {k:32s} {v * 1e3:8.1f} ms")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="artifacts and compile cache (default: a new temporary directory)")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per model and kind of run")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--format", choices=("default", "inline", "sidecar"), default="default",
                        help="how the artifacts hold their weights (default: what Model.save writes by default)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--baseline", type=Path, help="source tree of another keydnn to measure alongside "
                                                      "(run with PYTHONPATH=BASELINE)")
    parser.add_argument("--baseline-format", choices=("default", "inline", "sidecar"), default="inline",
                        help="the weight form of the baseline's artifacts (default: inline, the old default)")
    args = parser.parse_args()
    names = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"--models: {unknown} not among {', '.join(MODELS)}")
    directory = args.dir or Path(tempfile.mkdtemp(prefix="keydnn-warm-"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"working in {directory}; {machine()}", flush=True)
    configs: list[tuple[str, Path | None]] = [(args.format, None)]
    prepare(directory, names, args.format)
    if args.baseline:
        configs.append((args.baseline_format, args.baseline.resolve()))
        prepare(directory, names, args.baseline_format, args.baseline.resolve())
    results = {}
    for name in names:
        results[name] = measure(directory, name, configs, args.runs)
        for r in results[name]:
            print(report(name, r), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "configs": [[f, str(s)] for f, s in configs],
                                         "results": results}, indent=1))


if __name__ == "__main__":
    main()
