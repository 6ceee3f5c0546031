"""Nothing lost: a conversion killed with SIGKILL at any moment leaves the previous artifact intact.

``keydnn convert`` overwrites a good artifact while the test kills it --
at random moments (start-up, reading, converting) and, through a wrapper
that reports when the write begins and slows fsync/rename down, inside the
write itself. After every kill the destination must be exactly the old or
exactly the new artifact and load; killed writers may leave a temp file
(nothing can clean up after SIGKILL), which is named so that no reader ever
sees it and is removed by the next successful write (``keydnn.atomic``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import keydnn
from keydnn.atomic import atomic_write_bytes, sweep_stale_temps
from keydnn.errors import ArtifactError

from . import seeds

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

# Runs `keydnn convert` after slowing down the write (fsync, rename) and announcing when it starts,
# so that a kill lands inside the write. Everything else is the real command.
_SLOW_WRITER = """
import os, sys, tempfile, time, runpy
real_mkstemp, real_fsync, real_replace = tempfile.mkstemp, os.fsync, os.replace
def mkstemp(*a, **k):
    print("writing", flush=True)
    return real_mkstemp(*a, **k)
def fsync(fd):
    time.sleep(0.02); return real_fsync(fd)
def replace(a, b):
    time.sleep(0.02); real_replace(a, b); time.sleep(0.02)
tempfile.mkstemp, os.fsync, os.replace = mkstemp, fsync, replace
sys.argv = ["keydnn"] + sys.argv[1:]
runpy.run_module("keydnn", run_name="__main__")
"""


def _env() -> dict[str, str]:
    # The writes are the point here: read in process (saves a child interpreter per conversion).
    # SOURCE_DATE_EPOCH pins the recorded conversion time, so that converting one file twice gives one byte string.
    return {**os.environ, "KEYDNN_DEBUG": "", "PYTHONUNBUFFERED": "1", "KEYDNN_ISOLATE_READER": "0",
            "SOURCE_DATE_EPOCH": "0"}


def _convert(src: Path, dst: Path, *extra: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "keydnn", "convert", "--src", str(src), "--dst", str(dst), *extra],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


#: Kills of a running convert: half inside the write of the artifact, half at a random moment.
KILLS = 12


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, bytes]]:
    """Two different models (same structure, other weights) and the exact artifacts each converts to."""
    folder = tmp_path_factory.mktemp("kill_models")
    a = seeds.write_keras_seed(folder / "a.keras", "keras3-zip")
    b = seeds.write_keras_seed(folder / "b.keras", "keras3-zip", weights=seeds.seed_weights(seed=9))
    refs = {}
    for src in (a, b):
        out = folder / f"ref-{src.stem}.json"
        _convert(src, out)
        refs[src.name] = out.read_bytes()
    assert refs[a.name] != refs[b.name]
    return a, b, refs


def test_sigkill_during_convert_leaves_old_or_new(two_models: tuple[Path, Path, dict[str, bytes]],
                                                   tmp_path: Path) -> None:
    a, b, refs = two_models
    dst = tmp_path / "model.json"
    _convert(a, dst)
    rng = random.Random(20240607)
    outcomes = {"old": 0, "new": 0}
    in_write = 0
    for i in range(KILLS):
        current = dst.read_bytes()
        src = b if current == refs[a.name] else a
        slow = i % 2 == 1  # odd iterations: kill inside the write; even: at a random moment
        cmd = ([sys.executable, "-c", _SLOW_WRITER] if slow else [sys.executable, "-m", "keydnn"])
        proc = subprocess.Popen([*cmd, "convert", "--src", str(src), "--dst", str(dst)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=_env(), text=True)
        if slow:
            assert proc.stdout is not None
            proc.stdout.readline()  # "writing": the temp file is being created now
            in_write += 1
            time.sleep(rng.uniform(0.0, 0.08))
        else:
            time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        after = dst.read_bytes()
        assert after in (current, refs[src.name]), f"iteration {i}: destination is neither old nor new"
        outcomes["old" if after == current else "new"] += 1
        keydnn.load(dst)  # and it loads
        assert all(".model.json." in name for name in _temps(tmp_path))  # only our own temp files, if any
    assert in_write == KILLS // 2
    print(f"kills: {outcomes}, temp files left by killed writers: {_temps(tmp_path)}")
    # A later successful write removes every temp file left by the killed writers.
    _convert(a, dst)
    assert dst.read_bytes() == refs[a.name]
    assert _temps(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json"]


def test_sigkill_with_sidecar_never_goes_unnoticed(two_models: tuple[Path, Path, dict[str, bytes]],
                                                    tmp_path: Path) -> None:
    """With a sidecar each file is replaced atomically; the pair is published by two renames back to back.

    A kill between those two renames leaves the old JSON beside the new sidecar: the JSON's checksum of
    the sidecar then refuses it by name (never silently wrong weights). Everything else is old or new.
    """
    a, b, _ = two_models
    dst = tmp_path / "model.json"
    _convert(a, dst, "--sidecar")
    rng = random.Random(7)
    for i in range(4):
        before = (dst.read_bytes(), (tmp_path / "model.weights.bin").read_bytes())
        src = b if i % 2 == 0 else a
        proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, "convert", "--src", str(src), "--dst", str(dst),
                                 "--sidecar"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), text=True)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        try:
            keydnn.load(dst)
        except ArtifactError as exc:
            assert "sidecar" in str(exc) and "SHA-256" in str(exc), str(exc)
            assert dst.read_bytes() == before[0]  # the JSON is still the old one, intact
        _convert(src, dst, "--sidecar")  # repair for the next round (as a user would)


def test_stale_temp_files_are_removed_only_when_their_writer_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "model.json"
    atomic_write_bytes(target, b"{}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import keydnn.atomic as atomic

        host = atomic._host_tag()
        stale = tmp_path / f".model.json.{host}-{dead.pid}.abcd1234.tmp"
        busy = tmp_path / f".model.json.{host}-{live.pid}.efgh5678.tmp"
        other_host = tmp_path / f".model.json.otherhost-{dead.pid}.ijkl9012.tmp"
        other_target = tmp_path / f".other.json.{host}-{dead.pid}.mnop3456.tmp"
        for path in (stale, busy, other_host, other_target):
            path.write_bytes(b"partial")
        assert sweep_stale_temps(target) == [stale]
        atomic_write_bytes(target, b"{}")  # every commit sweeps; nothing else is removed
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["model.json", busy.name, other_host.name, other_target.name])
    finally:
        live.kill()
        live.wait()
