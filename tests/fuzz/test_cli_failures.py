"""Every failure path of ``keydnn convert`` / ``keydnn inspect-ir``: exit code, message, no traceback, nothing lost.

Complements tests/test_cli.py (missing files, garbage input, unknown pass,
missing output directory, bad options) with the paths a hostile or careless
environment produces: directories where files belong, unwritable or
unreadable paths, devices and pipes, artifacts where Keras files belong (and
the reverse), future format versions, empty files, archives without weights,
models that execute code, interrupts. Exit status: 0 success, 1 the model
cannot be converted, 2 bad usage or unreadable input; see keydnn/cli.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from . import harness, seeds

_DEVICE_ERRORS = ("no such file", "not a regular file", "directory")


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keydnn", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "KEYDNN_DEBUG": ""}, timeout=timeout)


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert proc.stderr.strip(), "a failure must say why"
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def _converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    """The seed Keras file and the artifact ``keydnn convert`` makes of it (converted once per module)."""
    folder = tmp_path_factory.mktemp("cli_seed")
    seeds.write_keras_seed(folder / "m.keras", "keras3-zip")
    proc = run("convert", "--src", "m.keras", "--dst", "good.json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return (folder / "m.keras").read_bytes(), (folder / "good.json").read_bytes()


@pytest.fixture
def workdir(tmp_path: Path, _converted: tuple[bytes, bytes]) -> Path:
    """A folder with a valid Keras file, a valid artifact converted from it, and a subdirectory."""
    (tmp_path / "m.keras").write_bytes(_converted[0])
    (tmp_path / "good.json").write_bytes(_converted[1])
    (tmp_path / "adir").mkdir()
    return tmp_path


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- convert


def test_dst_is_a_directory(workdir: Path) -> None:
    assert_clean_failure(run("convert", "--src", "m.keras", "--dst", "adir", cwd=workdir), 2, "adir", "directory")
    assert list((workdir / "adir").iterdir()) == []


def test_src_is_a_directory(workdir: Path) -> None:
    before = _listing(workdir)
    assert_clean_failure(run("convert", "--src", "adir", "--dst", "o.json", cwd=workdir), 2, "adir", "directory")
    assert _listing(workdir) == before


def test_dst_in_a_place_that_cannot_be_written(workdir: Path) -> None:
    """/proc refuses new files even to root; the message names the destination, not a temp file."""
    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    proc = run("convert", "--src", "m.keras", "--dst", "/proc/keydnn-out.json", cwd=workdir)
    assert_clean_failure(proc, 2, "/proc/keydnn-out.json")
    assert ".tmp" not in proc.stderr


@pytest.mark.skipif(harness.is_root(), reason="root writes into read-only directories")
def test_dst_directory_not_writable(workdir: Path) -> None:
    locked = workdir / "locked"
    locked.mkdir()
    (locked / "old.json").write_bytes((workdir / "good.json").read_bytes())
    locked.chmod(0o555)
    try:
        proc = run("convert", "--src", "m.keras", "--dst", str(locked / "old.json"), cwd=workdir)
        assert_clean_failure(proc, 2, "old.json")
        assert (locked / "old.json").read_bytes() == (workdir / "good.json").read_bytes()
        assert _listing(locked) == ["old.json"]
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(harness.is_root(), reason="root reads unreadable files")
def test_src_unreadable(workdir: Path) -> None:
    (workdir / "m.keras").chmod(0)
    try:
        assert_clean_failure(run("convert", "--src", "m.keras", "--dst", "o.json", cwd=workdir), 2, "m.keras")
        assert_clean_failure(run("inspect-ir", "m.keras", cwd=workdir), 2, "m.keras")
    finally:
        (workdir / "m.keras").chmod(0o644)
    assert not (workdir / "o.json").exists()


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_src_is_a_device(workdir: Path, device: str) -> None:
    if not Path(device).exists():
        pytest.skip(f"no {device}")
    proc = run("convert", "--src", device, "--dst", "o.json", cwd=workdir, timeout=60)
    assert_clean_failure(proc, 2, device)
    assert not (workdir / "o.json").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_src_is_a_named_pipe(workdir: Path) -> None:
    """read_source used to open --src to sniff it before checking it is a regular file: a FIFO blocked forever."""
    os.mkfifo(workdir / "pipe.h5")
    proc = run("convert", "--src", "pipe.h5", "--dst", "o.json", cwd=workdir, timeout=30)
    assert_clean_failure(proc, 2, "pipe.h5", "not a regular file")
    assert_clean_failure(run("inspect-ir", "pipe.h5", cwd=workdir, timeout=30), 2, "pipe.h5", "not a regular file")


def test_artifact_passed_as_src(workdir: Path) -> None:
    proc = run("convert", "--src", "good.json", "--dst", "o.json", cwd=workdir)
    assert_clean_failure(proc, 2, "good.json", "already a KeyDNN artifact")
    assert not (workdir / "o.json").exists()


@pytest.mark.parametrize("name", ["empty.h5", "empty.keras", "empty.json"])
def test_empty_src(workdir: Path, name: str) -> None:
    (workdir / name).write_bytes(b"")
    assert_clean_failure(run("convert", "--src", name, "--dst", "o.json", cwd=workdir), 2, name)
    assert_clean_failure(run("inspect-ir", name, cwd=workdir), 2, name)
    assert not (workdir / "o.json").exists()


def test_zip_without_weights(workdir: Path) -> None:
    with zipfile.ZipFile(workdir / "m.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n != "model.weights.h5"}
    (workdir / "noweights.keras").write_bytes(seeds.zip_bytes(members))
    before = (workdir / "good.json").read_bytes()
    proc = run("convert", "--src", "noweights.keras", "--dst", "good.json", cwd=workdir)
    assert_clean_failure(proc, 2, "noweights.keras", "no model.weights.h5")
    assert (workdir / "good.json").read_bytes() == before  # the previous output survives the failure


def test_zip_that_is_not_a_keras_archive(workdir: Path) -> None:
    (workdir / "other.keras").write_bytes(seeds.zip_bytes({"readme.txt": b"hello"}))
    assert_clean_failure(run("convert", "--src", "other.keras", "--dst", "o.json", cwd=workdir), 2,
                         "no config.json")


def test_lambda_model_exits_1_naming_the_layer(workdir: Path) -> None:
    config = seeds.model_config("keras2-h5")
    config["config"]["layers"][2] = {"class_name": "Lambda", "config": {
        "name": "sneaky", "function": ["4wAAAAA=\n", None, None], "function_type": "lambda", "module": "__main__",
        "arguments": {}}}
    seeds.write_keras_seed(workdir / "lam.h5", "keras2-h5", config=config)
    before = (workdir / "good.json").read_bytes()
    proc = run("convert", "--src", "lam.h5", "--dst", "good.json", cwd=workdir)
    assert_clean_failure(proc, 1, "'sneaky' (Lambda)", "unsupported layer class 'Lambda'")
    assert (workdir / "good.json").read_bytes() == before


def test_hostile_config_exits_cleanly(workdir: Path) -> None:
    text = json.dumps(seeds.model_config("keras3-zip")).replace('"filters": 3', '"filters": NaN')
    with zipfile.ZipFile(workdir / "m.keras") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["config.json"] = text.encode()
    (workdir / "nan.keras").write_bytes(seeds.zip_bytes(members))
    assert_clean_failure(run("convert", "--src", "nan.keras", "--dst", "o.json", cwd=workdir), 1, "'conv2d'")


def test_dst_same_as_src_is_refused(workdir: Path) -> None:
    """--dst naming the --src file used to overwrite the user's Keras model with the artifact (exit 0)."""
    shutil.copy(workdir / "m.keras", workdir / "same.keras")
    before = (workdir / "same.keras").read_bytes()
    proc = run("convert", "--src", "same.keras", "--dst", "same.keras", cwd=workdir)
    assert (workdir / "same.keras").read_bytes() == before
    assert_clean_failure(proc, 2, "same.keras", "--dst names the --src file")
    os.symlink("same.keras", workdir / "link.keras")  # the same file under another name
    proc = run("convert", "--src", "same.keras", "--dst", str(workdir / "link.keras"), cwd=workdir)
    assert (workdir / "same.keras").read_bytes() == before
    assert_clean_failure(proc, 2, "link.keras", "--dst names the --src file")


def test_check_distinct(tmp_path: Path) -> None:
    """The helper itself: refuses the same file under any name, accepts a new or a different file."""
    from keydnn.cli.common import check_distinct

    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / "b").write_bytes(b"x")
    os.link(tmp_path / "a", tmp_path / "hard")
    check_distinct(str(tmp_path / "a"), str(tmp_path / "b"))
    check_distinct(str(tmp_path / "a"), str(tmp_path / "new.json"))
    check_distinct(str(tmp_path / "a"), None)
    for same in (tmp_path / "a", tmp_path / "hard", f"{tmp_path}/./a"):
        with pytest.raises(SystemExit) as info:
            check_distinct(str(tmp_path / "a"), str(same))
        assert info.value.code == 2


# ----------------------------------------------------------------------------- reading in a child process


def _keydnn_without_heap_check() -> str:
    """``keydnn`` whose reading child has the global-heap check off, so that libhdf5 really spins on the input."""
    from .test_isolation import CHILD_WITHOUT_HEAP_CHECK

    return (f"import runpy, sys\nfrom keydnn.frontends.keras import reader\n"
            f"reader.isolation.CHILD = {CHILD_WITHOUT_HEAP_CHECK!r}\n"
            "sys.argv = ['keydnn'] + sys.argv[1:]\nrunpy.run_module('keydnn', run_name='__main__')\n")


def test_convert_of_a_file_that_makes_libhdf5_spin_ends(workdir: Path) -> None:
    """The CLI reads Keras files in a child process by default: a hang in libhdf5 ends at the limit, exit 1.

    The reader refuses the known spin inputs before libhdf5 sees them (test_isolation.py); here that check is
    off in the child, standing in for a libhdf5 bug no check foresees.
    """
    from .test_isolation import spin_input

    path = spin_input(workdir)
    before = _listing(workdir)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _keydnn_without_heap_check(), "convert", "--src", str(path),
                           "--dst", "o.json"], capture_output=True, text=True, cwd=workdir, timeout=harness.HANG_SECONDS,
                          env={**os.environ, "KEYDNN_DEBUG": "", "KEYDNN_ISOLATE_READER": "",
                               "KEYDNN_ISOLATE_TIMEOUT": "3"})
    elapsed = time.perf_counter() - t0
    if "did not finish within 3 s" not in proc.stderr:  # another libhdf5 may refuse the file outright
        assert_clean_failure(proc, 2, str(path))
        pytest.skip("this libhdf5 does not spin on the input; refused cleanly")
    assert_clean_failure(proc, 1, str(path), "did not finish within 3 s", "KEYDNN_ISOLATE_TIMEOUT")
    assert elapsed < harness.HANG_SECONDS, elapsed  # ended by the 3 s limit: a spin never ends by itself
    assert _listing(workdir) == before


def test_convert_refuses_the_spin_input_without_waiting(workdir: Path) -> None:
    """With the heap check on (the default), the same file is refused as corrupt, exit 2, at once."""
    from .test_isolation import spin_input

    path = spin_input(workdir)
    t0 = time.perf_counter()
    assert_clean_failure(run("convert", "--src", str(path), "--dst", "o.json", cwd=workdir), 2, str(path),
                         "corrupt HDF5 global heap")
    assert time.perf_counter() - t0 < harness.HANG_SECONDS  # with the check off, libhdf5 would spin forever
    assert not (workdir / "o.json").exists()


def test_cli_reads_in_a_child_unless_turned_off(workdir: Path) -> None:
    """Isolation is the CLI default; KEYDNN_ISOLATE_READER=0 reads in process (a tiny limit shows which)."""
    env = {**os.environ, "KEYDNN_DEBUG": "", "KEYDNN_ISOLATE_TIMEOUT": "0.001"}
    for value in ("", "1"):
        proc = subprocess.run([sys.executable, "-m", "keydnn", "inspect-ir", "m.keras"], capture_output=True,
                              text=True, cwd=workdir, timeout=120, env={**env, "KEYDNN_ISOLATE_READER": value})
        assert_clean_failure(proc, 1, "m.keras", "did not finish within 0.001 s")
    proc = subprocess.run([sys.executable, "-m", "keydnn", "inspect-ir", "m.keras"], capture_output=True,
                          text=True, cwd=workdir, timeout=120, env={**env, "KEYDNN_ISOLATE_READER": "0"})
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "keydnn", "inspect-ir", "m.keras"], capture_output=True,
                          text=True, cwd=workdir, timeout=120, env={**env, "KEYDNN_ISOLATE_READER": "maybe"})
    assert_clean_failure(proc, 2, "KEYDNN_ISOLATE_READER")


def test_interrupt_during_write_keeps_old_output(workdir: Path) -> None:
    """Ctrl-C while the artifact is being written: exit 130, no traceback, old file intact, no temp file."""
    from .test_kill import _SLOW_WRITER

    before = (workdir / "good.json").read_bytes()
    other = seeds.write_keras_seed(workdir / "other.keras", "keras3-zip", weights=seeds.seed_weights(seed=4))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, "convert", "--src", str(other), "--dst", "good.json"],
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "KEYDNN_DEBUG": ""})
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.01)  # inside the (slowed) fsync of the temp file
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # the write finished before the signal arrived: then it is the new file
        pytest.skip("the interrupt arrived after the write completed")
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err, (proc.returncode, err)
    assert (workdir / "good.json").read_bytes() == before
    # The interrupted write removes its temp file as KeyboardInterrupt unwinds through keydnn.atomic; only a
    # signal landing inside mkstemp itself can leave one, and then the next successful write sweeps it.
    if [p for p in workdir.iterdir() if p.name.endswith(".tmp")]:
        assert run("convert", "--src", "m.keras", "--dst", "good.json", cwd=workdir).returncode == 0
    assert not [p for p in workdir.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- inspect-ir


def test_inspect_future_version_artifact(workdir: Path) -> None:
    doc = json.loads((workdir / "good.json").read_text())
    doc["version"] = 99
    (workdir / "future.json").write_text(json.dumps(doc))
    assert_clean_failure(run("inspect-ir", "future.json", cwd=workdir), 2, "future.json", "version 99",
                         "upgrade keydnn")


def test_inspect_version_zero_artifact(workdir: Path) -> None:
    doc = json.loads((workdir / "good.json").read_text())
    doc["version"] = 0
    (workdir / "v0.json").write_text(json.dumps(doc))
    assert_clean_failure(run("inspect-ir", "v0.json", cwd=workdir), 2, "v0.json", "version 0")


def test_inspect_tampered_artifact(workdir: Path) -> None:
    doc = json.loads((workdir / "good.json").read_text())
    entry = doc["weights"][0]
    entry["data"] = ("B" if entry["data"][0] == "A" else "A") + entry["data"][1:]
    (workdir / "tampered.json").write_text(json.dumps(doc))
    assert_clean_failure(run("inspect-ir", "tampered.json", cwd=workdir), 2, "tampered.json", repr(entry["name"]),
                         "SHA-256")


def test_inspect_directory_and_missing(workdir: Path) -> None:
    assert_clean_failure(run("inspect-ir", "adir", cwd=workdir), 2, "adir")
    assert_clean_failure(run("inspect-ir", "missing.h5", cwd=workdir), 2, "missing.h5")


def test_inspect_corrupt_h5(workdir: Path) -> None:
    data = bytearray(seeds.keras2_h5_bytes())
    data[600:700] = b"\xff" * 100
    (workdir / "corrupt.h5").write_bytes(bytes(data))
    assert_clean_failure(run("inspect-ir", "corrupt.h5", cwd=workdir), 2, "corrupt.h5")
