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
    monkeypatch.setattr(reader, "_CHILD", "import sys; sys.exit(3)")
    with pytest.raises(KerasInteropError, match="exited with status 3"):
        read_keras_file(seeds.write_keras_seed(tmp_path / "m.h5", "keras3-h5"))


def test_child_killed_by_a_signal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "_CHILD", "import os; os.abort()")
    with pytest.raises(KerasInteropError, match="killed by signal"):
        read_keras_file(seeds.write_keras_seed(tmp_path / "m.h5", "keras3-h5"), isolate=True)


def test_child_running_too_long(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader, "_CHILD", "import time; time.sleep(60)")
    t0 = time.perf_counter()
    with pytest.raises(KerasInteropError, match="did not finish within 0.5 s"):
        read_keras_file(seeds.write_keras_seed(tmp_path / "m.h5", "keras3-h5"), isolate=True, timeout=0.5)
    assert time.perf_counter() - t0 < 10


def test_a_file_that_makes_libhdf5_spin_is_refused_in_bounded_time(tmp_path: Path) -> None:
    """Input h5:277 of the long run (seed 0): libhdf5 1.14.6 loops forever reading an attribute.

    (In process it never returns -- see benchmarks/fuzz_long.py findings. Another libhdf5 may refuse
    it outright instead; either way the isolated read ends within its timeout with a clean error.)
    """
    _, inp = inputs.generate("h5", random.Random("0/h5/277"), inputs.Seeds())
    path = inp.write(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(KerasInteropError) as info:
        read_keras_file(path, isolate=True, timeout=3)
    assert time.perf_counter() - t0 < 15
    assert str(path) in str(info.value)
