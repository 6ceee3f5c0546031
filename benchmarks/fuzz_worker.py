"""One fuzz input and the worker process that runs a range of them, for ``fuzz_long.py`` (the parent).

The worker prints one protocol line per event (S start, D done, E escape, M memory) so that the parent
can tell a hang or a crash of the process from a finding; findings are saved with a reproduce line.
"""

from __future__ import annotations

import json
import random
import resource
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

__all__ = ["input_rng", "run_one", "safety_net_cause", "worker", "last_safety_net_cause", "save_finding"]


# --------------------------------------------------------------------------- one input


def input_rng(seed: int, target: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{target}/{index}")


def run_one(target: str, index: int, seed: int, seeds: Any, workdir: Path, timeout: float) -> tuple[str, str]:
    """(kind, outcome) of one input; raises harness.Escape on a finding."""
    from fuzz import harness, inputs

    kind, inp = inputs.generate(target, input_rng(seed, target, index), seeds)
    for old in workdir.iterdir():
        old.unlink()
    path = inp.write(workdir)
    if target == "artifact":
        return kind, harness.check_load_artifact(path, seconds=timeout)
    read = harness.check_read_keras(path, seconds=timeout)
    conv = harness.check_from_keras(path, strict=inp.strict, allow_non_linear_activation=inp.allow_non_linear_activation,
                                    seconds=timeout)
    return kind, f"read:{read}/convert:{conv}"


def safety_net_cause(text: str) -> str:
    """'TypeError' from '... (TypeError: ...)' in a safety-net message."""
    for marker in ("unreadable or malformed model file (", "internal error while loading ("):
        if marker in text:
            return text.split(marker, 1)[1].split(":", 1)[0]
    return "?"


# --------------------------------------------------------------------------- worker


def worker(target: str, start: int, end: int, seed: int, out: Path, timeout: float, mem_mb: int) -> int:
    """Run inputs start..end-1, one protocol line per event on stdout."""
    import warnings

    warnings.simplefilter("ignore")
    from fuzz import harness, inputs

    seeds = inputs.Seeds()
    _ = seeds.keras, seeds.artifacts  # build before the memory baseline
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz-{target}-"))
    try:  # warm caches and imports before taking the memory baseline
        run_one(target, start, seed, seeds, workdir, timeout)
    except Exception:  # noqa: BLE001 -- the input is run (and reported) again below
        pass
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit = lambda *parts: print(*parts, flush=True)  # noqa: E731
    for index in range(start, end):
        emit("S", index)
        t0 = time.perf_counter()
        try:
            kind, outcome = run_one(target, index, seed, seeds, workdir, timeout)
        except harness.Escape as exc:
            kind = inputs.generate(target, input_rng(seed, target, index), seeds)[0]
            save_finding(out, target, index, seed, seeds, "escape", str(exc))
            emit("E", index, kind, json.dumps({"what": exc.what, "signature": exc.signature}))
            continue
        except BaseException as exc:  # a bug in the oracle itself: record, keep going
            kind = "?"
            save_finding(out, target, index, seed, seeds, "oracle", traceback.format_exc())
            emit("E", index, kind, json.dumps({"what": "oracle error", "signature": type(exc).__name__}))
            continue
        seconds = time.perf_counter() - t0
        cause = ""
        if "safety-net" in outcome:
            cause = last_safety_net_cause(target, index, seed, seeds, workdir)
        emit("D", index, kind, outcome, f"{seconds:.4f}", cause or "-")
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline
        if grown > mem_mb:
            save_finding(out, target, index, seed, seeds, "memory", f"peak RSS grew by {grown:.0f} MiB")
            emit("M", index, kind, f"{grown:.0f}")
            return 3  # restart with a fresh baseline
    return 0


def last_safety_net_cause(target: str, index: int, seed: int, seeds: Any, workdir: Path) -> str:
    """Re-read the input to learn which unexpected exception the safety net caught (for the report)."""
    import keydnn
    from keydnn.backends.artifact import load_artifact
    from keydnn.frontends.keras.reader import read_keras_file

    path = next(p for p in workdir.iterdir() if p.name in ("a.json", "model.h5", "model.keras"))
    try:
        if target == "artifact":
            load_artifact(path)
        else:
            read_keras_file(path)
            keydnn.from_keras(path)
    except Exception as exc:  # noqa: BLE001 -- classifying, not handling
        return safety_net_cause(str(exc))
    return "?"


def save_finding(out: Path, target: str, index: int, seed: int, seeds: Any, what: str, detail: str) -> Path:
    from fuzz import inputs

    folder = out / "findings" / f"{target}-{index}-{what}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        kind, inp = inputs.generate(target, input_rng(seed, target, index), seeds)
        inp.write(folder)
    except Exception:  # noqa: BLE001 -- the generator itself failed: that is the finding's detail
        detail += "\n\ngenerating the input failed:\n" + traceback.format_exc()
        kind, inp = "?", inputs.FuzzInput("?", {})
    (folder / "finding.txt").write_text(
        f"target {target} index {index} seed {seed} kind {kind} ({inp.note}) strict={inp.strict} "
        f"allow_non_linear_activation={inp.allow_non_linear_activation}\n"
        f"reproduce: python benchmarks/fuzz_long.py --reproduce {target}:{index} --seed {seed}\n\n{detail}\n")
    return folder
