"""Reading in a child process: what no in-process check can stop (libhdf5 spinning or crashing) is bounded.

The long fuzz run found corrupt ``.h5`` files on which libhdf5 1.14 loops
forever inside a single C call that holds the GIL. ``read_keras_file(...,
isolate=True)`` reads in a child process with a time and memory limit and
must give exactly the same spec (or the same error) as reading in process.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from keydnn.errors import KerasInteropError
from keydnn.frontends.keras import reader
from keydnn.frontends.keras.reader import read_keras_file

from . import inputs, seeds
from .harness import HANG_SECONDS


@pytest.mark.parametrize("flavor,model", [("keras3-zip", "zoo"), ("keras3-h5", "cnn"), ("keras2-h5", "zoo")])
def test_isolated_read_gives_the_same_spec(tmp_path: Path, flavor: str, model: str) -> None:
    path = seeds.write_keras_seed(tmp_path / "m.bin", flavor, model=model)
    isolated = read_keras_file(path, isolate=True)
    direct = read_keras_file(path, isolate=False)
    assert isolated == direct
    assert isolated.input_layer_configs == direct.input_layer_configs
    assert all(not w.flags.writeable for layer in isolated.layers for _, w in layer.weights)


def test_isolated_read_gives_the_same_error(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    path.write_bytes(seeds.zip_bytes({"readme.txt": b"hi"}))
    with pytest.raises(KerasInteropError) as direct:
        read_keras_file(path)
    with pytest.raises(KerasInteropError) as isolated:
        read_keras_file(path, isolate=True)
    assert str(isolated.value) == str(direct.value)


def test_environment_turns_isolation_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYDNN_ISOLATE_READER", "1")
    monkeypatch.setattr(reader.isolation, "CHILD", "import sys; sys.exit(3)")
    with pytest.raises(KerasInteropError, match="exited with status 3"):
        read_keras_file(seeds.write_keras_seed(tmp_path / "m.h5", "keras3-h5"))


def test_child_killed_by_a_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader.isolation, "CHILD", "import os; os.abort()")
    with pytest.raises(KerasInteropError, match="killed by signal"):
        read_keras_file(seeds.write_keras_seed(tmp_path / "m.h5", "keras3-h5"), isolate=True)


def test_child_running_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader.isolation, "CHILD", "import time; time.sleep(3600)")
    t0 = time.perf_counter()
    with pytest.raises(KerasInteropError, match="did not finish within 0.5 s"):
        read_keras_file(seeds.write_keras_seed(tmp_path / "m.h5", "keras3-h5"), isolate=True, timeout=0.5)
    assert time.perf_counter() - t0 < HANG_SECONDS  # ended by the limit, not by the child's hour of sleep


#: The reading child with the reader's global-heap check switched off: libhdf5 then really spins on a spin input,
#: standing in for whatever next libhdf5 bug no check foresees.
CHILD_WITHOUT_HEAP_CHECK = (
    "import sys; from keydnn.frontends.keras.reader import heap_guard; "
    "heap_guard.check_global_heaps = lambda *a: None; "
    "from keydnn.frontends.keras.reader.child import isolated_main; "
    "sys.exit(isolated_main(sys.argv[1], sys.argv[2]))"
)


def spin_input(folder: Path) -> Path:
    """Input h5:277 of the long fuzz run (seed 0): a global heap free-space object of size 0."""
    _, inp = inputs.generate("h5", random.Random("0/h5/277"), inputs.Seeds())
    return inp.write(folder)


def test_a_file_that_makes_libhdf5_spin_is_refused_in_bounded_time(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """libhdf5 1.14 loops forever on input h5:277 (in process it never returns; see benchmarks/FUZZ.md). With
    the reader's heap check off, the isolated read ends at its limit with a clean error all the same.
    (Another libhdf5 may refuse it outright instead; either way the read ends with a KerasInteropError.)"""
    path = spin_input(tmp_path)
    monkeypatch.setattr(reader.isolation, "CHILD", CHILD_WITHOUT_HEAP_CHECK)
    t0 = time.perf_counter()
    with pytest.raises(KerasInteropError) as info:
        read_keras_file(path, isolate=True, timeout=3)
    assert time.perf_counter() - t0 < HANG_SECONDS  # libhdf5 spins forever: only the limit ends it
    assert str(path) in str(info.value)


def test_the_heap_check_refuses_the_spin_input_in_process(tmp_path: Path) -> None:
    """Every hang the long run found was a global heap object libhdf5 cannot walk past; the reader now refuses
    such a file before libhdf5 sees it, so even an in-process read ends (in milliseconds)."""
    path = spin_input(tmp_path)
    with pytest.raises(KerasInteropError, match="corrupt HDF5 global heap") as info:
        read_keras_file(path, isolate=False)  # in process: libhdf5 would never return
    assert str(path) in str(info.value)


def _free_space_object(data: bytes) -> tuple[int, int]:
    """(offset of the first GCOL collection, offset of its free-space object) in a seed file."""
    import struct

    pos = data.index(b"GCOL")
    size = struct.unpack_from("<Q", data, pos + 8)[0]
    p = pos + 16
    while p + 16 <= pos + size:
        index, = struct.unpack_from("<H", data, p)
        obj = struct.unpack_from("<Q", data, p + 8)[0]
        if index == 0:
            return pos, p
        p += 16 + -(-obj // 8) * 8
    raise AssertionError("no free-space object")


def _descriptor(data: bytes, collection: int) -> int:
    """Offset of the 4-byte length of the first variable-length descriptor pointing into ``collection``."""
    import struct

    size = struct.unpack_from("<Q", data, collection + 8)[0]
    p, objects = collection + 16, {}
    while p + 16 <= collection + size:
        index, = struct.unpack_from("<H", data, p)
        obj = struct.unpack_from("<Q", data, p + 8)[0]
        if index == 0:
            break
        objects[index] = obj
        p += 16 + -(-obj // 8) * 8
    for index in objects:
        q = data.find(struct.pack("<QI", collection, index))
        if q >= 4:
            return q - 4
    raise AssertionError("no descriptor")


@pytest.mark.parametrize("flavor", seeds.KERAS_FLAVORS)
@pytest.mark.parametrize("how", ["zero-size free space", "object past the end", "string longer than its object"])
def test_global_heap_check(tmp_path: Path, flavor: str, how: str) -> None:
    """The three cases libhdf5 walks into (a loop, a read past its buffer, a 4 GiB allocation from a 12-byte
    field), in .h5 files and in a .keras archive's weights; and a file libhdf5 wrote always passes."""
    import io
    import struct
    import zipfile

    data = seeds.keras_seed_bytes(flavor)
    inner = data
    if flavor == "keras3-zip":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        inner = members["model.weights.h5"]
    if b"GCOL" not in inner:
        pytest.skip("no global heap in this file")
    reader.check_global_heaps(inner, "x", "y")  # as written: passes
    pos, free = _free_space_object(inner)
    patched = bytearray(inner)
    if how == "zero-size free space":
        struct.pack_into("<Q", patched, free + 8, 0)
    elif how == "object past the end":
        struct.pack_into("<HHIQ", patched, free, 7, 1, 0, 10**6)
    else:
        struct.pack_into("<I", patched, _descriptor(inner, pos), 2**32 - 1)
    if flavor == "keras3-zip":
        members["model.weights.h5"] = bytes(patched)
        out = seeds.zip_bytes(members)
    else:
        out = bytes(patched)
    path = tmp_path / ("m.keras" if flavor == "keras3-zip" else "m.h5")
    path.write_bytes(out)
    with pytest.raises(KerasInteropError, match="corrupt HDF5 (global heap|variable-length data)"):
        read_keras_file(path)


@pytest.mark.parametrize("flavor", ["keras3-h5", "keras2-h5"])
def test_a_string_attribute_claiming_more_than_the_file_is_refused(tmp_path: Path, flavor: str) -> None:
    """Length and heap address both overwritten (input h5:40683 of the long run spliced text over them): the
    descriptor points at no heap object, and libhdf5 would still allocate the claimed length first."""
    import struct

    data = bytearray(seeds.keras_seed_bytes(flavor))
    name_at = data.index(b"model_config\x00")
    assert data[name_at - 8] == 1  # a version-1 attribute message: name, type, space padded to 8 bytes
    data_at = name_at + 16 + 24 + 8
    length, address, index = struct.unpack_from("<IQI", data, data_at)
    assert 1000 < length < len(data) and index >= 1, (length, address, index)  # the model_config string
    struct.pack_into("<IQI", data, data_at, 0x6D616E5F, 0x2273736C635F656D, 7)  # 'class_name"' spliced in
    path = tmp_path / "m.h5"
    path.write_bytes(bytes(data))
    with pytest.raises(KerasInteropError, match="attribute 'model_config'.*claims 1835101791 elements"):
        read_keras_file(path)


_PEAK_OF_A_READ = """
import resource, sys
from keydnn.errors import KerasInteropError
from keydnn.frontends.keras.reader import read_keras_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    read_keras_file(sys.argv[1])
except KerasInteropError as exc:
    print(str(exc).replace("\\n", " "))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("case, expected", [
    # one mutated length made libhdf5 allocate and zero 1.3 GB for a 22-byte name before refusing it
    ("0/h5/23363", "claims 1342177302 elements"),
    # a spliced attribute: 1.75 GB allocated for model_config before
    ("0/h5/40683", "attribute 'model_config'"),
], ids=["string-claiming-gigabytes", "spliced-attribute"])
def test_a_lying_length_is_refused_before_libhdf5_allocates(tmp_path: Path, case: str, expected: str) -> None:
    """Inputs of the long fuzz run (seed 0) that made libhdf5 allocate gigabytes before refusing them: the
    reader now refuses each file, naming it, with the peak RSS untouched."""
    import subprocess
    import sys

    _, inp = inputs.generate("h5", random.Random(case), inputs.Seeds())
    path = inp.write(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _PEAK_OF_A_READ, str(path)], capture_output=True, text=True,
                          timeout=120)
    message, grown_mib = proc.stdout.strip().rsplit("\n", 1)
    assert expected in message and str(path) in message, proc.stdout + proc.stderr
    assert int(grown_mib) < 100, grown_mib


def test_stopped_child_is_a_reader_process_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Time limit from KEYDNN_ISOLATE_TIMEOUT; the error is a KerasInteropError subclass that says how to
    raise the limit (the CLI reports it with exit status 1: a stopped read does not prove the file bad)."""
    monkeypatch.setattr(reader.isolation, "CHILD", "import time; time.sleep(60)")
    monkeypatch.setenv("KEYDNN_ISOLATE_TIMEOUT", "0.5")
    with pytest.raises(reader.ReaderProcessError, match="did not finish within 0.5 s") as info:
        read_keras_file(seeds.write_keras_seed(tmp_path / "m.h5", "keras3-h5"), isolate=True)
    assert isinstance(info.value, KerasInteropError)
    assert "KEYDNN_ISOLATE_TIMEOUT" in str(info.value) and str(tmp_path / "m.h5") in str(info.value)
    monkeypatch.setenv("KEYDNN_ISOLATE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="KEYDNN_ISOLATE_TIMEOUT"):
        read_keras_file(tmp_path / "m.h5", isolate=True)


@pytest.mark.parametrize("value,default,expected", [
    ("", True, True), ("", False, False), ("1", False, True), ("yes", False, True), ("0", True, False),
    (" OFF ", True, False), ("maybe", True, ValueError),
])
def test_isolation_from_env(monkeypatch: pytest.MonkeyPatch, value: str, default: bool, expected: object) -> None:
    monkeypatch.setenv("KEYDNN_ISOLATE_READER", value)
    if expected is ValueError:
        with pytest.raises(ValueError, match="KEYDNN_ISOLATE_READER"):
            reader.isolation_from_env(default)
    else:
        assert reader.isolation_from_env(default) is expected


def test_from_keras_reads_in_process_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API keeps one process by default; ``isolate_reader=True`` or the environment isolate."""
    import keydnn

    path = seeds.write_keras_seed(tmp_path / "m.keras", "keras3-zip")
    monkeypatch.delenv("KEYDNN_ISOLATE_READER", raising=False)
    monkeypatch.setattr(reader.isolation, "CHILD", "import sys; sys.exit(3)")  # any isolated read fails visibly
    assert keydnn.from_keras(path).graph.nodes
    with pytest.raises(reader.ReaderProcessError, match="exited with status 3"):
        keydnn.from_keras(path, isolate_reader=True)
    monkeypatch.setenv("KEYDNN_ISOLATE_READER", "1")
    with pytest.raises(reader.ReaderProcessError, match="exited with status 3"):
        keydnn.from_keras(path)
    assert keydnn.from_keras(path, isolate_reader=False).graph.nodes


def test_from_keras_isolated_gives_the_same_model(tmp_path: Path) -> None:
    import numpy as np

    import keydnn

    path = seeds.write_keras_seed(tmp_path / "m.keras", "keras3-zip", model="zoo")
    direct = keydnn.from_keras(path)
    isolated = keydnn.from_keras(path, isolate_reader=True)
    assert str(isolated.graph) == str(direct.graph)
    for name, array in direct.graph.weights.items():
        np.testing.assert_array_equal(isolated.graph.weights[name], array)
