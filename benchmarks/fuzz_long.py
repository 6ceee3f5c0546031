"""Long fuzz run of keydnn's readers of untrusted files (GitHub issue 7).

    python benchmarks/fuzz_long.py                      # 10,000 inputs per reader, 2 worker processes
    python benchmarks/fuzz_long.py --inputs 50000 --jobs 4 --out /tmp/fuzz
    python benchmarks/fuzz_long.py --targets artifact --inputs 2000 --seed 7
    python benchmarks/fuzz_long.py --reproduce keras:1234 --seed 0   # re-run one input, with its traceback

Readers ("targets"), each fed seed files mutated by ``tests/fuzz/inputs.py``
(bytes, truncation, hostile configs, wrong weights, HDF5 structure, zip
structure, artifact JSON/tensors/versions):

* ``h5``       -- whole-model ``.h5`` (Keras 3 and tf_keras): ``read_keras_file`` and ``keydnn.from_keras``;
* ``keras``    -- ``.keras`` zip archives: the same two entry points;
* ``artifact`` -- KeyDNN artifacts (inline and sidecar): ``load_artifact`` and ``keydnn.load``.

Pass criterion (``tests/fuzz/harness.py``): every input is accepted or refused
with ``KerasInteropError`` / ``ArtifactError`` whose message names the file;
no other exception, no hang (``--timeout`` s per input), no input that grows
the worker's peak memory by more than ``--mem-mb``, no crash of the process.

A hang is almost always libhdf5 looping forever inside one C call on a
corrupt ``.h5`` (nothing in the process can interrupt it). Every one the
first runs found was a global heap collection libhdf5 cannot walk past,
which the reader now refuses before libhdf5 sees it (``reader.check_global_heaps``;
see benchmarks/FUZZ.md). After the run each hang input is re-read twice:
in process (does a check now refuse it?) and with ``read_keras_file(...,
isolate=True)`` with the heap check switched off in the child, to confirm the
last line of defence -- a child process with a time limit, the command
line's default -- ends it (``--isolation-timeout``; 0 skips the checks).

Inputs are generated from ``random.Random(f"{seed}/{target}/{index}")``, so
a finding is reproduced from ``--seed`` and its index alone. Each chunk of
inputs runs in a worker subprocess; a worker killed by a signal (a crash in
libhdf5, zlib, ...), stalled, or over the memory bound is recorded with its
input saved under ``--out``/findings and restarted after that input. The run
ends with a per-reader table (inputs, time, outcomes, findings) and writes
``summary.json``; the exit status is 1 when anything was found.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGETS = ("h5", "keras", "artifact")
CHUNK = 2500  # inputs per worker process (bounds the cost of one restart and of leaks)

from fuzz_worker import input_rng, run_one, save_finding, worker  # noqa: E402


# --------------------------------------------------------------------------- parent


class Stats:
    def __init__(self) -> None:
        self.count: Counter = Counter()
        self.kinds: dict[str, Counter] = defaultdict(Counter)
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.safety_net: dict[str, Counter] = defaultdict(Counter)
        self.safety_net_first: dict[str, dict[str, int]] = defaultdict(dict)
        self.findings: dict[str, list[dict]] = defaultdict(list)
        self.seconds: Counter = Counter()
        self.slowest: dict[str, tuple[float, int]] = {}


def _reader(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.put(line.rstrip("\n"))
    lines.put(None)


def run_chunk(args: argparse.Namespace, target: str, start: int, end: int, stats: Stats, lock: threading.Lock) -> None:
    """Run one chunk in worker processes, restarting after each crash, hang or memory finding."""
    next_index = start
    while next_index < end:
        cmd = [sys.executable, __file__, "--worker", target, str(next_index), str(end), "--seed", str(args.seed),
               "--out", str(args.out), "--timeout", str(args.timeout), "--mem-mb", str(args.mem_mb)]
        stderr_path = args.out / "workers" / f"{target}-{next_index}.stderr"
        stderr_path.parent.mkdir(parents=True, exist_ok=True)
        with open(stderr_path, "w") as stderr:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc, lines), daemon=True).start()
        current: int | None = None
        started = False
        t_start = time.perf_counter()
        while True:
            try:
                line = lines.get(timeout=args.timeout * 1.5 + 5 + (120 if current is None else 0))
            except queue.Empty:  # stalled past the in-process alarm: a hang inside native code
                proc.kill()
                proc.wait()
                index = current if current is not None else next_index
                _record_lost(args, target, index, "hang", f"no progress for {args.timeout * 1.5 + 5:.0f} s", stats, lock)
                next_index = index + 1
                break
            if line is None:
                code = proc.wait()
                if code == 0:
                    next_index = end
                elif code != 3:  # 3: a memory finding, already recorded; restart after it
                    if current is None and not started:
                        raise SystemExit(f"worker for {target} failed to start (status {code}); see {stderr_path}:\n"
                                         + stderr_path.read_text()[-3000:])
                    index = current if current is not None else next_index
                    _record_lost(args, target, index, "crash", f"worker exited with status {code}", stats, lock)
                    next_index = index + 1
                break
            tag = line[:1]
            parts = line.split(" ", 5 if tag == "D" else 3)
            if tag == "S":
                started = True
                current = int(parts[1])
                t_start = time.perf_counter()
                continue
            index = int(parts[1])
            kind = parts[2]
            with lock:
                stats.count[target] += 1
                stats.kinds[target][kind] += 1
                if tag == "D":
                    outcome, seconds, cause = parts[3], float(parts[4]), parts[5]
                    stats.outcomes[target][outcome] += 1
                    stats.seconds[target] += seconds
                    if seconds > stats.slowest.get(target, (0.0, -1))[0]:
                        stats.slowest[target] = (seconds, index)
                    if cause != "-":
                        stats.safety_net[target][cause] += 1
                        stats.safety_net_first[target].setdefault(cause, index)
                elif tag == "E":
                    info = json.loads(parts[3])
                    stats.findings[target].append({"index": index, "kind": kind, **info})
                    stats.seconds[target] += time.perf_counter() - t_start
                elif tag == "M":
                    stats.findings[target].append({"index": index, "kind": kind, "what": "memory",
                                                   "signature": f"peak RSS +{parts[3]} MiB"})
            next_index = index + 1
            current = None


def _record_lost(args: argparse.Namespace, target: str, index: int, what: str, detail: str, stats: Stats,
                 lock: threading.Lock) -> None:
    from fuzz import inputs

    folder = save_finding(args.out, target, index, args.seed, inputs.Seeds(), what, detail)
    with lock:
        stats.count[target] += 1
        stats.findings[target].append({"index": index, "kind": "?", "what": what, "signature": detail,
                                       "saved": str(folder)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=10_000, help="inputs per reader (default 10000)")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of h5,keras,artifact")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes at once (default 2)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds one input may take (default 20)")
    parser.add_argument("--mem-mb", type=int, default=1024, help="peak-RSS growth one input may cause (MiB)")
    parser.add_argument("--out", type=Path, default=None, help="findings and summary.json (default: a temp dir)")
    parser.add_argument("--isolation-timeout", type=float, default=5.0,
                        help="re-read each hang with the isolated reader under this limit (0: skip)")
    parser.add_argument("--reproduce", metavar="TARGET:INDEX", help="re-run one input in this process")
    parser.add_argument("--worker", nargs=3, metavar=("TARGET", "START", "END"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out = (args.out or Path(tempfile.mkdtemp(prefix="keydnn-fuzz-long-"))).resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.worker:
        target, start, end = args.worker
        return worker(target, int(start), int(end), args.seed, args.out, args.timeout, args.mem_mb)
    if args.reproduce:
        return reproduce(args)

    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    chunks = [(t, s, min(s + CHUNK, args.inputs)) for t in targets for s in range(0, args.inputs, CHUNK)]
    stats, lock = Stats(), threading.Lock()
    wall: dict[str, list[float]] = defaultdict(list)
    pending: queue.Queue = queue.Queue()
    for chunk in chunks:
        pending.put(chunk)

    def slot() -> None:
        while True:
            try:
                target, start, end = pending.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            run_chunk(args, target, start, end, stats, lock)
            with lock:
                wall[target].append(time.perf_counter() - t0)

    print(f"fuzzing {', '.join(targets)}: {args.inputs} inputs each, seed {args.seed}, {args.jobs} jobs, "
          f"output in {args.out}", flush=True)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=slot) for _ in range(max(1, args.jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = time.perf_counter() - t0
    if args.isolation_timeout > 0:
        check_hangs_isolated(args, stats)
    return report(args, targets, stats, wall, total)


#: The reading child with the global-heap check off: what isolation alone does with a hang input.
_CHILD_WITHOUT_HEAP_CHECK = (
    "import sys; from keydnn.frontends.keras.reader import heap_guard; "
    "heap_guard.check_global_heaps = lambda *a: None; "
    "from keydnn.frontends.keras.reader.child import isolated_main; "
    "sys.exit(isolated_main(sys.argv[1], sys.argv[2]))"
)


def _in_process_verdict(path: Path, timeout: float) -> str:
    """Read ``path`` in a fresh process without isolation: refused (by what), accepted, or still hanging."""
    code = ("import sys\nfrom keydnn.errors import KerasInteropError\n"
            "from keydnn.frontends.keras.reader import read_keras_file\n"
            "try:\n    read_keras_file(sys.argv[1], isolate=False)\n"
            "except KerasInteropError as exc:\n"
            "    print('refused in process' + (' by the global heap check' if 'global heap' in str(exc) else ''))\n"
            "else:\n    print('accepted in process')\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=timeout + 10)
    except subprocess.TimeoutExpired:
        return "still hangs in process"
    return proc.stdout.strip() or f"in-process check failed: {proc.stderr.strip()[-200:]}"


def check_hangs_isolated(args: argparse.Namespace, stats: Stats) -> None:
    """Mark each hang finding with what an in-process read does now, and whether the isolated reader (heap
    check off, so only isolation stands between the caller and libhdf5) refuses it in bounded time."""
    from keydnn.errors import KerasInteropError
    from keydnn.frontends.keras import reader
    from keydnn.frontends.keras.reader import read_keras_file

    for target, findings in stats.findings.items():
        for finding in findings:
            if finding["what"] != "hang" or "saved" not in finding:
                continue
            path = next((p for p in Path(finding["saved"]).iterdir() if p.name.startswith("model.")), None)
            if path is None:
                continue
            finding["in_process"] = _in_process_verdict(path, args.isolation_timeout)
            t0 = time.perf_counter()
            saved, reader.isolation.CHILD = reader.isolation.CHILD, _CHILD_WITHOUT_HEAP_CHECK
            try:
                read_keras_file(path, isolate=True, timeout=args.isolation_timeout)
                verdict = "accepted by the isolated reader"
            except KerasInteropError as exc:
                verdict = "refused by the isolated reader" + (
                    " (stopped at its time limit)" if "did not finish" in str(exc) else "")
            finally:
                reader.isolation.CHILD = saved
            finding["isolated"] = f"{verdict} in {time.perf_counter() - t0:.1f} s"


def report(args: argparse.Namespace, targets: list[str], stats: Stats, wall: dict, total: float) -> int:
    summary: dict[str, Any] = {"seed": args.seed, "inputs_per_target": args.inputs, "wall_seconds": round(total, 1),
                               "targets": {}}
    print(f"\n{'reader':9s} {'inputs':>7s} {'cpu s':>8s} {'wall s':>8s} {'in/s':>7s} {'findings':>8s}  outcomes")
    found = 0
    for target in targets:
        n = stats.count[target]
        cpu = stats.seconds[target]
        w = sum(wall[target])
        findings = stats.findings[target]
        found += len(findings)
        outcomes = dict(stats.outcomes[target].most_common())
        print(f"{target:9s} {n:7d} {cpu:8.1f} {w:8.1f} {n / cpu if cpu else 0:7.1f} {len(findings):8d}  {outcomes}")
        summary["targets"][target] = {
            "inputs": n, "cpu_seconds": round(cpu, 1), "worker_wall_seconds": round(w, 1),
            "by_kind": dict(stats.kinds[target]), "outcomes": outcomes,
            "safety_net_causes": dict(stats.safety_net[target]),
            "safety_net_first_index": stats.safety_net_first[target],
            "slowest_input": {"seconds": round(stats.slowest.get(target, (0, -1))[0], 3),
                              "index": stats.slowest.get(target, (0, -1))[1]},
            "findings": findings,
        }
    for target in targets:
        if stats.safety_net[target]:
            print(f"  {target}: safety-net (generic wrapper) causes {dict(stats.safety_net[target])}, "
                  f"first indices {stats.safety_net_first[target]}")
        by_sig = Counter(f"{f['what']}: {f['signature']}" for f in stats.findings[target])
        for sig, count in by_sig.most_common():
            first = next(f["index"] for f in stats.findings[target] if f"{f['what']}: {f['signature']}" == sig)
            print(f"  {target}: FINDING x{count} (first index {first}): {sig}")
        isolated = Counter(f["isolated"].split(" in ")[0] for f in stats.findings[target] if "isolated" in f)
        if isolated:
            print(f"  {target}: hangs re-read in a child process (heap check off): {dict(isolated)}")
        now = Counter(f["in_process"] for f in stats.findings[target] if "in_process" in f)
        if now:
            print(f"  {target}: hangs re-read in process with this keydnn: {dict(now)}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"\ntotal wall {total:.1f} s; summary in {args.out / 'summary.json'}"
          + (f"; findings in {args.out / 'findings'}" if found else "; no findings"))
    return 1 if found else 0


def reproduce(args: argparse.Namespace) -> int:
    """Regenerate one input, save it, and run the oracle here so the traceback is printed."""
    from fuzz import harness, inputs

    target, index = args.reproduce.split(":")
    seeds = inputs.Seeds()
    folder = args.out / f"{target}-{index}"
    folder.mkdir(parents=True, exist_ok=True)
    kind, inp = inputs.generate(target, input_rng(args.seed, target, int(index)), seeds)
    path = inp.write(folder)
    print(f"{target}:{index} kind {kind} ({inp.note}) strict={inp.strict} "
          f"allow_non_linear_activation={inp.allow_non_linear_activation} -> {path}")
    try:
        print(run_one(target, int(index), args.seed, seeds, Path(tempfile.mkdtemp()), args.timeout))
    except harness.Escape as exc:
        print(exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
