"""Model files never run code: lambdas and custom objects are refused by name, never deserialized.

While a hostile file is read and converted, every door to code execution is
watched twice: the Python entry points are monkeypatched to raise
(``marshal.loads``, ``pickle.loads``/``load``/``Unpickler``, ``eval``,
``exec``, ``importlib.import_module``, ``__import__`` of a module the file
names) and a ``sys.audit`` hook records the interpreter's own events
(``marshal.loads``, ``pickle.find_class``, ``exec``, ``compile`` of text
from the file, ``import`` of a named module, ``os.system``,
``subprocess.Popen``, and any ``open`` for writing). The tests then assert
that nothing was called, nothing was written, and the error names the
offending layer or object.
"""

from __future__ import annotations

import builtins
import copy
import importlib
import io
import marshal
import os
import pickle
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import keydnn
from keydnn.errors import KerasInteropError
from keydnn.frontends.keras.reader import read_keras_file

from . import mutate, seeds

ROOT = Path(__file__).resolve().parents[2]
#: A string every hostile payload carries, so compiled text from the file is recognizable.
MARKER = "keydnn_pwned_marker"
EVIL_MODULES = ("evil_module", "os", "subprocess", "posix", MARKER)

_WATCHING: list["Watch"] = []


def _audit(event: str, args: tuple) -> None:
    if _WATCHING:
        _WATCHING[-1].event(event, args)


def _by_import_system() -> bool:
    """True when the current call comes from Python's import machinery loading an installed module's .pyc.

    Lazy imports (a codec, a keydnn submodule) unmarshal cached bytecode of files on disk; that is
    not code from the model file, so it is let through.
    """
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


sys.addaudithook(_audit)  # hooks cannot be removed; it only records while a Watch is active


class Watch:
    """Records (and, for Python entry points, blocks) every code-execution and write attempt."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self.monkeypatch = monkeypatch

    def event(self, name: str, args: tuple) -> None:
        if name in ("marshal.loads", "marshal.load") and _by_import_system():
            return
        if name in ("marshal.loads", "marshal.load", "pickle.find_class", "os.system", "subprocess.Popen",
                    "os.exec", "os.posix_spawn", "ctypes.dlopen"):
            self.calls.append(f"audit:{name}")
        elif name in ("exec", "compile"):
            source = args[0] if args else b""
            text = source.decode("latin-1") if isinstance(source, (bytes, bytearray)) else str(source)
            if MARKER in text or "lambda" in text:
                self.calls.append(f"audit:{name}:{text[:60]}")
        elif name == "import" and args and str(args[0]).split(".")[0] in EVIL_MODULES:
            self.calls.append(f"audit:import:{args[0]}")
        elif name == "open" and len(args) >= 3:
            mode, flags = args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing:
                self.calls.append(f"audit:open-for-writing:{args[0]}")

    def _blocked(self, name: str, real: Any) -> Any:
        def blocked(*args: Any, **kwargs: Any) -> Any:
            if _by_import_system():  # importlib execs/unmarshals installed modules it imports lazily
                return real(*args, **kwargs)
            self.calls.append(name)
            raise AssertionError(f"{name} called while reading a model file")
        return blocked

    def __enter__(self) -> "Watch":
        mp = self.monkeypatch
        for module, attr in ((marshal, "loads"), (marshal, "load"), (pickle, "loads"), (pickle, "load"),
                             (pickle, "Unpickler"), (builtins, "eval"), (builtins, "exec"),
                             (importlib, "import_module")):
            mp.setattr(module, attr, self._blocked(f"{module.__name__}.{attr}", getattr(module, attr)))
        real_import = builtins.__import__

        def guarded_import(name: str, *args: Any, **kwargs: Any) -> Any:
            if name.split(".")[0] in EVIL_MODULES[:1] + (MARKER,):
                self.calls.append(f"__import__:{name}")
                raise AssertionError(f"import of {name!r} named by a model file")
            return real_import(name, *args, **kwargs)

        mp.setattr(builtins, "__import__", guarded_import)
        _WATCHING.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _WATCHING.remove(self)
        self.monkeypatch.undo()


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[Watch]:
    # Import everything conversion may import lazily first, so the watch sees only what the file causes.
    import keydnn.backends.artifact  # noqa: F401
    import keydnn.frontends.keras  # noqa: F401
    from keydnn.frontends.keras import functional, lower  # noqa: F401

    yield Watch(monkeypatch)


# ----------------------------------------------------------------------------- hostile configs

_K3_LAMBDA = copy.deepcopy(mutate.KERAS3_LAMBDA)
_K3_LAMBDA["config"]["code"] = _K3_LAMBDA["config"]["code"] + MARKER  # not even valid marshal data
_K2_LAMBDA = copy.deepcopy(mutate.KERAS2_LAMBDA_CONFIG)
_K2_LAMBDA["function"][0] = f"{MARKER}\n"


def _replace_layer(flavor: str, index: int, entry: dict[str, Any], model: str = "cnn") -> dict[str, Any]:
    config = seeds.model_config(flavor, model)
    config["config"]["layers"][index] = entry
    return config


def _lambda_k3(flavor: str) -> dict[str, Any]:
    return _replace_layer(flavor, 2, {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                                      "config": {"name": "lambda", "function": _K3_LAMBDA, "arguments": {},
                                                 "output_shape": None, "mask": None}})


def _lambda_k2(flavor: str) -> dict[str, Any]:
    return _replace_layer(flavor, 2, {"class_name": "Lambda", "config": _K2_LAMBDA})


def _lambda_k2_function(flavor: str) -> dict[str, Any]:
    cfg = dict(_K2_LAMBDA, function="system", function_type="function", module="os")
    return _replace_layer(flavor, 2, {"class_name": "Lambda", "config": cfg})


def _custom_class(flavor: str) -> dict[str, Any]:
    return _replace_layer(flavor, 2, {"module": "evil_module", "class_name": "EvilLayer",
                                      "registered_name": f"Custom>{MARKER}",
                                      "config": {"name": "evil", "payload": MARKER}})


def _custom_activation(flavor: str) -> dict[str, Any]:
    config = seeds.model_config(flavor)
    config["config"]["layers"][-2]["config"]["activation"] = {
        "module": "evil_module", "class_name": "function", "config": MARKER, "registered_name": MARKER}
    return config


def _lambda_activation(flavor: str) -> dict[str, Any]:
    return _replace_layer(flavor, 2, {"module": "keras.layers", "class_name": "Activation", "registered_name": None,
                                      "config": {"name": "act", "activation": _K3_LAMBDA}})


def _lambda_in_nested_model(flavor: str) -> dict[str, Any]:
    inner = _lambda_k3(flavor)
    inner["config"]["name"] = "inner"
    inner["config"]["layers"] = [inner["config"]["layers"][0], inner["config"]["layers"][2]]
    inner["config"]["layers"][0]["config"]["batch_shape"] = [None, 3, 6, 6]
    inner["config"]["layers"][0]["config"]["batch_input_shape"] = [None, 3, 6, 6]
    return _replace_layer(flavor, 2, {"module": "keras", "class_name": "Sequential", "registered_name": None,
                                      "config": inner["config"], "build_config": {"input_shape": [None, 3, 6, 6]}})


HOSTILE = {
    "keras3-lambda": (_lambda_k3, "Lambda"),
    "keras2-lambda-bytecode": (_lambda_k2, "Lambda"),
    "keras2-lambda-function-by-name": (_lambda_k2_function, "Lambda"),
    "custom-registered-class": (_custom_class, "EvilLayer"),
    "custom-activation-function": (_custom_activation, "activation"),
    "activation-layer-with-lambda": (_lambda_activation, "activation"),
    "lambda-in-nested-model": (_lambda_in_nested_model, "Lambda"),
}


@pytest.mark.parametrize("flavor", seeds.KERAS_FLAVORS)
@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("strict", [True, False])
def test_serialized_code_is_refused_by_name_without_running(case: str, flavor: str, strict: bool, tmp_path: Path,
                                                            watch: Watch) -> None:
    build, name = HOSTILE[case]
    path = seeds.write_keras_seed(tmp_path / ("m.keras" if flavor == "keras3-zip" else "m.h5"), flavor,
                                  config=build(flavor))
    before = sorted(p.name for p in tmp_path.iterdir())
    with watch:
        spec = read_keras_file(path)  # reading reports the layer as data ...
        error = None
        try:
            model = keydnn.from_keras(path, strict=strict)  # ... converting refuses it by name
        except KerasInteropError as exc:
            error = str(exc)
    assert watch.calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert any(layer.class_name in (name, "Sequential", "Activation") or name == "activation" for layer in spec.layers)
    if strict:
        assert error is not None and name in error, error
    elif error is None:  # non-strict: a placeholder that names the class and cannot run
        assert model.graph.find_opaque()


@pytest.mark.parametrize("flavor", ["keras3-zip", "keras3-h5"])
def test_custom_subclass_disguised_as_builtin_is_refused(flavor: str, tmp_path: Path, watch: Watch) -> None:
    """A custom class named like a built-in (class_name "Dense", module evil_module) is not converted as Dense."""
    config = seeds.model_config(flavor)
    config["config"]["layers"][-2].update({"module": "evil_module", "registered_name": "Custom>Dense"})
    path = seeds.write_keras_seed(tmp_path / "m.bin", flavor, config=config)
    with watch, pytest.raises(KerasInteropError, match="Custom>Dense|evil_module"):
        keydnn.from_keras(path)
    assert watch.calls == []


def test_custom_objects_in_training_only_fields_are_never_imported(tmp_path: Path, watch: Watch) -> None:
    """Initializers/regularizers/constraints are ignored at inference, and ignoring them loads nothing."""
    config = seeds.model_config("keras3-zip")
    conv = config["config"]["layers"][1]["config"]
    evil = {"module": "evil_module", "class_name": "Evil", "config": {"code": _K3_LAMBDA}, "registered_name": MARKER}
    for key in ("kernel_initializer", "bias_initializer", "kernel_regularizer", "kernel_constraint"):
        conv[key] = copy.deepcopy(evil)
    path = seeds.write_keras_seed(tmp_path / "m.keras", "keras3-zip", config=config)
    with watch:
        keydnn.from_keras(path)
    assert watch.calls == []


def test_the_watch_would_see_a_deserialization(watch: Watch) -> None:
    """The watch itself works: a marshal.loads and an import of a named module are both caught."""
    code = compile("1", "<x>", "eval")
    with watch:
        with pytest.raises(AssertionError):
            marshal.loads(marshal.dumps(code))
        with pytest.raises(AssertionError):
            __import__("evil_module")
    assert watch.calls == ["marshal.loads", "__import__:evil_module"]


# ----------------------------------------------------------------------------- zip paths


@pytest.mark.parametrize("evil", ["../evil", "../../evil-up2", "/tmp/keydnn-evil-absolute", "sub/../../evil-sub",
                                  "config.json/../../evil-cfg", "C:\\keydnn-evil", "layers/../../../evil-deep"])
def test_zip_member_paths_are_never_used_to_write(evil: str, tmp_path: Path, watch: Watch,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Member names are only looked up, never joined to a directory: nothing appears anywhere."""
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    with zipfile.ZipFile(io.BytesIO(seeds.keras3_zip_bytes())) as zf:
        members = [(i.filename, zf.read(i)) for i in zf.infolist()]
    path = work / "m.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(zipfile.ZipInfo(evil), b"pwned")
        for name, data in members:
            zf.writestr(name, data)
        zf.writestr(zipfile.ZipInfo(evil.replace("evil", "evil2")), b"pwned")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with watch:
        keydnn.from_keras(path)
    assert watch.calls == []
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/keydnn-evil-absolute").exists()


def test_reader_source_never_extracts_or_writes() -> None:
    """Static backstop for the test above: the reader never extracts, and writes only its child's results.

    The only writes are the isolated child's spec/weights into a fresh temp directory it is given
    (``reader/child.py`` and ``reader/transfer.py``).
    """
    modules = sorted((ROOT / "frontends" / "keras" / "reader").glob("*.py"))
    assert {"child.py", "transfer.py", "archive.py", "h5file.py"} <= {m.name for m in modules}
    source = "".join(m.read_text() for m in modules)
    assert not re.search(r"\.extract(all)?\(", source)
    reading = "".join(m.read_text() for m in modules if m.name not in ("child.py", "transfer.py"))
    assert not re.search(r"open\([^)]*,\s*['\"][wax]|write_text|write_bytes|np\.save", reading)


# ----------------------------------------------------------------------------- TensorFlow load paths


def test_only_one_module_loads_keras_files_with_tensorflow() -> None:
    """Every TF load of a user's file goes through keydnn/verify.py, which must load safely (next tests)."""
    hits = []
    for folder in ("keydnn", "frontends", "backends", "ir"):
        for path in (ROOT / folder).rglob("*.py"):
            if re.search(r"load_model\(|saving\.load|legacy.*load", path.read_text()):
                hits.append(path.relative_to(ROOT).as_posix())
    assert hits == ["keydnn/verify.py"], hits
    source = (ROOT / "keydnn" / "verify.py").read_text()
    body = source[source.index("def load_keras_model"):]
    body = body[:body.index("\ndef ")]
    # Both guards: safe_mode=True (Keras 3 formats) and an explicit SafeModeScope (tf_keras legacy .h5 ignores it).
    assert "safe_mode=True" in body and "SafeModeScope(True)" in body, body
    reader_source = "".join(m.read_text() for m in (ROOT / "frontends" / "keras" / "reader").glob("*.py"))
    assert "read_keras_file" in reader_source
    assert not re.search(r"from_config|deserialize|load_model|import tensorflow", reader_source)


def _marker_lambda_model(tmp_path: Path, keras_module: Any, name: str) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    code = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('pwned'), x)[1]"
    L = keras_module.layers
    model = keras_module.Sequential([L.Input(shape=(3,)), L.Lambda(eval(code)), L.Dense(2)])  # noqa: S307
    path = tmp_path / name
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    marker.unlink(missing_ok=True)  # building the model ran the lambda once, in this test's own process
    return path, marker


def _convert_verify(src: Path, dst: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "keydnn", "convert", "--src", str(src), "--dst", str(dst),
                           "--verify"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KEYDNN_DEBUG": "", "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.keras
def test_verify_never_runs_a_keras3_lambda(tmp_path: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    src, marker = _marker_lambda_model(tmp_path, tf.keras, "lam.keras")
    proc = _convert_verify(src, tmp_path / "out.json")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert not marker.exists(), "the model file's lambda ran"
    assert not (tmp_path / "out.json").exists()


@pytest.mark.keras
# Found by this suite (issue 7): verify.py used to load Keras-2 .h5 files with tf_keras, where safe_mode does not
# apply to the legacy format, and before keydnn's own conversion had refused the Lambda -- the lambda ran.
def test_verify_never_runs_a_keras2_lambda(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    tf_keras = pytest.importorskip("tf_keras")
    src, marker = _marker_lambda_model(tmp_path, tf_keras, "lam.h5")
    proc = _convert_verify(src, tmp_path / "out.json")
    assert not marker.exists(), "the model file's lambda ran"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
