"""The layering of keydnn, kept by tests: who may import whom, and what a light import really loads.

Layers, top to bottom: the API and the command line (``keydnn.api``, ``keydnn.model``, ``keydnn.cli``, ...) ->
``keydnn.frontends`` and ``keydnn.backends`` -> ``keydnn.ir`` -> the leaf modules ``keydnn.errors``,
``keydnn.atomic`` and ``keydnn._version``. The CPU and CUDA backends share backend-neutral helpers from
``keydnn.backends`` (``broadcast``, ``epilogues``), never each other.

The contracts themselves are written once, in pyproject.toml's ``[tool.importlinter]`` (import-linter, the dev
extra); ``lint-imports`` from the repository root checks the same. The subprocess tests check what an import
loads at run time, which the static graph cannot see (``keydnn/__init__`` loads its API lazily).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folder -> the package it installs as (pyproject.toml's package-dir).
FOLDERS = {"keydnn": "keydnn", "ir": "keydnn.ir", "frontends": "keydnn.frontends", "backends": "keydnn.backends"}
#: What keydnn.ir may import from keydnn outside itself.
IR_MAY_IMPORT = {"keydnn.errors", "keydnn.atomic", "keydnn._version"}


def test_import_linter_contracts_are_kept() -> None:
    """pyproject.toml's contracts: ir imports nothing above it, numba_cpu and numba_cuda are independent,
    frontends import no backend, frontends and backends import no API/CLI module."""
    cli = pytest.importorskip("importlinter.cli", reason="import-linter is in the dev extra")
    cwd = os.getcwd()
    os.chdir(ROOT)  # lint-imports reads ./pyproject.toml
    try:
        code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    finally:
        os.chdir(cwd)
    assert code == 0, "an import contract is broken: run `lint-imports` from the repository root to see which"


def test_import_linter_is_configured_for_every_layer() -> None:
    """The contracts the test above runs exist (a pyproject edit that drops one fails here, not silently)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ids = {c["id"] for c in config["contracts"]}
    assert ids >= {"ir-is-the-bottom-layer", "ir-core-below-passes", "backends-independent",
                   "frontends-below-backends", "frontends-backends-below-api"}, ids
    assert config["root_package"] == "keydnn"


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of the modules ``path`` (module ``module``) imports, at any depth in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _source_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder)
            if folder == "keydnn" and rel.parts[0] in ("ir", "frontends", "backends"):
                continue  # the links to the other folders
            parts = [package, *rel.with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def test_import_graph_without_import_linter() -> None:
    """The same rules over the source's own import statements (no tool needed), plus two import-linter cannot
    say: keydnn.ir imports only the leaf modules of keydnn (an allow-list, so a new top-level module is covered),
    and no library module does ``import keydnn`` (the whole API) -- ``keydnn._version`` has the version."""
    modules = _source_modules()
    assert "keydnn.ir.graph" in modules and "keydnn.frontends.keras.reader.files" in modules
    broken = []
    for module, path in sorted(modules.items()):
        ours = {m for m in _imports(path, module) if m == "keydnn" or m.startswith("keydnn.")}
        if module.startswith("keydnn.ir"):
            broken += [f"{module} -> {m}" for m in ours
                       if not m.startswith("keydnn.ir") and not any(m == a or m.startswith(a + ".")
                                                                    for a in IR_MAY_IMPORT)]
        if module.startswith(("keydnn.ir", "keydnn.backends", "keydnn.frontends")):
            broken += [f"{module} -> keydnn (the package API)" for m in ours if m == "keydnn"]
        for a, b in (("numba_cpu", "numba_cuda"), ("numba_cuda", "numba_cpu")):
            if module.startswith(f"keydnn.backends.{a}"):
                broken += [f"{module} -> {m}" for m in ours if m.startswith(f"keydnn.backends.{b}")]
        if module.startswith("keydnn.frontends"):
            broken += [f"{module} -> {m}" for m in ours if m.startswith("keydnn.backends")]
    assert broken == [], "\n".join(broken)


def _loaded_by(statement: str) -> list[str]:
    """Names of the modules a fresh interpreter has loaded after ``statement``."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


HEAVY = ("numba", "h5py", "click", "tensorflow", "keras", "tf_keras", "tqdm")
#: What reading a Keras file must not load (the reader needs h5py, not a JIT or TensorFlow).
NOT_FOR_THE_READER = ("numba", "tensorflow", "keras", "tf_keras")


def test_importing_the_ir_loads_no_frontend_backend_or_jit() -> None:
    """``import keydnn.ir.graph`` (what a pass or a tool over the IR needs) loads the IR and the leaf modules only:
    no numba, h5py, click or TensorFlow, and none of keydnn's API, frontends or backends (it loaded 45 keydnn
    modules and the compiler's API before ``keydnn/__init__`` loaded its API lazily)."""
    loaded = _loaded_by("import keydnn.ir.graph")
    assert "keydnn.ir.graph" in loaded
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert heavy == [], heavy
    ours = [m for m in loaded if m.startswith("keydnn")]
    outside = [m for m in ours if m != "keydnn" and not m.startswith("keydnn.ir") and m not in IR_MAY_IMPORT]
    assert outside == [], outside


def test_importing_keydnn_is_light_until_the_api_is_used() -> None:
    """``import keydnn`` gives the version and the errors at once; ``keydnn.from_keras`` loads the API on use."""
    loaded = _loaded_by("import keydnn; assert keydnn.__version__ and keydnn.KerasInteropError")
    assert [m for m in loaded if m.startswith("keydnn")] == ["keydnn", "keydnn._version", "keydnn.errors"]
    loaded = _loaded_by("import keydnn; keydnn.from_keras; keydnn.Model; keydnn.Device; keydnn.Sequential")
    assert {"keydnn.api", "keydnn.model", "keydnn.device", "keydnn.runtime"} <= set(loaded)


def test_the_lazy_api_names_are_the_real_ones() -> None:
    import keydnn
    from keydnn.api import from_keras, load
    from keydnn.device import Device
    from keydnn.model import Model
    from keydnn.runtime import Sequential

    assert (keydnn.from_keras, keydnn.load, keydnn.Device, keydnn.Model, keydnn.Sequential) == (
        from_keras, load, Device, Model, Sequential)
    assert set(keydnn.__all__) <= set(dir(keydnn))
    loaded = _loaded_by("import keydnn; keydnn.ir.Graph; keydnn.backends.compile_for")
    assert {"keydnn.ir", "keydnn.backends"} <= set(loaded)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        keydnn.nonexistent  # noqa: B018


def test_the_cuda_backend_loads_no_cpu_backend_module() -> None:
    """The CUDA backend shares ``keydnn.backends.broadcast`` and ``epilogues`` with the CPU backend; importing it
    (under the simulator where there is no GPU) loads no ``numba_cpu`` module."""
    loaded = _loaded_by("import keydnn.backends.numba_cuda")
    assert "keydnn.backends.numba_cuda.kernels_merge" in loaded
    assert [m for m in loaded if m.startswith("keydnn.backends.numba_cpu")] == []
    assert [m for m in loaded if m.startswith(("keydnn.frontends", "keydnn.cli"))] == []


def test_reading_a_keras_file_loads_no_backend() -> None:
    """The Keras reader is a frontend: it loads no backend and no JIT."""
    loaded = _loaded_by("from keydnn.frontends.keras.reader import read_keras_file")
    assert "keydnn.frontends.keras.reader.files" in loaded
    assert [m for m in loaded if m.startswith("keydnn.backends") or m.split(".")[0] in NOT_FOR_THE_READER] == []


def test_nothing_uses_the_keras_readers_private_names() -> None:
    """The reader package is used through its public names only: its facade (``keydnn.frontends.keras.reader``) and
    its modules' ``__all__``. No module imports a ``_name`` from another reader module, and no library, test or
    benchmark reaches into ``reader._name``."""
    package = "keydnn.frontends.keras.reader"
    files = dict(_source_modules())
    for folder in ("tests", "benchmarks", "examples"):
        files.update({f"{folder}:{p.relative_to(ROOT)}": p for p in (ROOT / folder).rglob("*.py")})
    broken = []
    for module, path in sorted(files.items()):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                imported = _imports_from(node, module, path)
                if imported == package or imported.startswith(package + "."):
                    broken += [f"{module}: from {imported} import {a.name}" for a in node.names
                               if a.name.startswith("_") and imported != module]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "reader":
                if node.attr.startswith("_") and "frontends.keras import reader" in path.read_text():
                    broken.append(f"{module}: reader.{node.attr}")
    assert broken == [], "\n".join(broken)


def _imports_from(node: ast.ImportFrom, module: str, path: Path) -> str:
    """The absolute name of the module a ``from ... import`` statement of ``module`` (at ``path``) imports from."""
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    parts = package.split(".")
    parts = parts[: len(parts) - node.level + 1] if ":" not in module else []
    return ".".join(parts + ([node.module] if node.module else []))


def test_the_code_generator_imports_no_jit() -> None:
    """numba_cpu/codegen plans and renders code as text (and keys the compile cache) without numba: a warm
    start from a prebuilt library never pays for importing the JIT."""
    code = (
        "import pkgutil, importlib, sys\n"
        "import keydnn.backends.numba_cpu.codegen as pkg\n"
        "for m in pkgutil.iter_modules(pkg.__path__):\n"
        "    importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'numba' or n.startswith(('numba.', 'llvmlite'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
