"""The repository root is a place users run keydnn from: the source tree's ``keydnn/`` is a complete package.

``ir/``, ``frontends/`` and ``backends/`` install as ``keydnn.ir``,
``keydnn.frontends`` and ``keydnn.backends`` (the build backend's package-dir
mapping). ``python -m keydnn`` and ``import keydnn`` put the current directory
first on ``sys.path``, so from the repository root the source tree's
``keydnn/`` is imported instead of an installed copy; the links
``keydnn/ir``, ``keydnn/frontends`` and ``keydnn/backends`` make that tree
complete, so it works whether keydnn was installed editable or not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bare_env(*front: Path) -> dict[str, str]:
    """An environment in which only ``front`` and the interpreter's site-packages directories are importable;
    run with ``python -S`` so that no ``.pth`` file (an editable install's finder among them) is processed."""
    site_dirs = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]  # venvs included
    paths = [str(p) for p in front] + list(dict.fromkeys(site_dirs))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONNOUSERSITE": "1"}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_source_tree_is_a_complete_package():
    """From the repository root, with no installed keydnn at all, the source tree imports and runs."""
    env = _bare_env()
    proc = _run(["-m", "keydnn", "--version"], ROOT, env)
    assert proc.returncode == 0 and "keydnn, version" in proc.stdout, proc.stderr
    proc = _run(["-c", "import keydnn, keydnn.ir.graph, keydnn.frontends.keras, keydnn.backends.artifact; "
                       "print(keydnn.__file__, keydnn.ir.graph.__file__)"], ROOT, env)
    assert proc.returncode == 0, proc.stderr
    package, graph = (Path(p) for p in proc.stdout.split())
    assert package == ROOT / "keydnn" / "__init__.py"
    assert graph.resolve() == (ROOT / "ir" / "graph.py").resolve()


@pytest.mark.slow
def test_non_editable_install_works_from_the_repository_root(tmp_path):
    """README command 1's `pip install .`, then `python -m keydnn` from the repository root and elsewhere."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=600)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip()[-300:]}")
    (wheel,) = wheels.glob("keydnn-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    env = _bare_env(target)
    for cwd in (ROOT, tmp_path):
        proc = _run(["-m", "keydnn", "--version"], cwd, env)
        assert proc.returncode == 0 and "keydnn, version" in proc.stdout, (cwd, proc.stderr)
        proc = _run(["-c", "import keydnn.ir, keydnn.backends.numba_cpu, keydnn.frontends.keras.reader; "
                           "print(keydnn.__file__)"], cwd, env)
        assert proc.returncode == 0, (cwd, proc.stderr)
        where = Path(proc.stdout.strip())
        assert where.is_relative_to(ROOT if cwd == ROOT else target), where


def test_every_source_package_is_listed_for_the_wheel():
    """pyproject.toml lists packages explicitly (ir/, frontends/ and backends/ are mapped under ``keydnn.``), so a new
    subpackage missing from the list would import from the source tree but be left out of ``pip install .``."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"listed packages with no __init__.py: {sorted(listed - found)}"
