"""Code-generation tiers (backends/numba_cpu/codegen/target.py): selection, refusal, cache keys, and the code itself.

CI runs the generated-code parity tests (``tests/numba_cpu``) once per
tier the machine has (``KEYDNN_CPU_TARGET=avx2`` / ``generic``, besides the
native one); the tests here check what a tier means on any machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from keydnn.backends.numba_cpu.codegen import target as target_mod
from keydnn.backends.numba_cpu.codegen.target import ENV, TIERS, current_target, native_tier
from keydnn.errors import BackendError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tier_env(monkeypatch):
    """Set ``KEYDNN_CPU_TARGET`` for ``current_target`` (its cache cleared before and after)."""

    def set_tier(value: str | None, features: frozenset[str] | None = None) -> None:
        if value is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, value)
        if features is not None:
            monkeypatch.setattr(target_mod, "_cpu_features", lambda: features)
        current_target.cache_clear()

    yield set_tier
    current_target.cache_clear()


def test_tiers_describe_their_registers_and_lanes():
    assert TIERS["avx512"].lanes("float32") == 16 and TIERS["avx512"].lanes("float64") == 8
    assert TIERS["avx2"].lanes("float32") == 8 and TIERS["avx2"].lanes("float64") == 4
    assert TIERS["generic"].lanes("float32") == 4 and TIERS["generic"].lanes("float64") == 4
    # a two-vector GEMM tile plus its operands fits the register file
    for tier in TIERS.values():
        assert 2 * tier.gemm_rows + 3 <= tier.registers


def test_every_tile_a_tier_asks_for_is_generated():
    from keydnn.backends.numba_cpu.codegen.ukernel_source import CHANNEL_TILES, PACKED_TILES, TILES

    for tier in TIERS.values():
        assert (tier.gemm_rows, 2) in TILES and (tier.gemm_rows, 2) in PACKED_TILES
        for nv in (1, 2, 3, 4):
            rows = tier.channel_rows(nv)
            assert (rows, nv) in CHANNEL_TILES
            assert rows * nv + 4 <= tier.registers  # accumulators, the loaded vector, pixel broadcasts


def test_native_is_the_widest_tier_the_cpu_has(tier_env):
    tier_env(None, frozenset({"AVX", "AVX2", "FMA3"}))
    assert native_tier() == "avx2" and current_target().name == "avx2"
    assert current_target().llvm_cpu is None  # the native tier compiles for the host CPU exactly
    tier_env(None, frozenset({"SSE2", "SSE3"}))
    assert current_target().name == "generic"
    tier_env(None, TIERS["avx512"].requires)
    assert current_target().name == "avx512"


def test_a_forced_tier_compiles_for_its_generic_cpu_model(tier_env):
    tier_env("avx2", TIERS["avx512"].requires)
    t = current_target()
    assert (t.name, t.llvm_cpu, t.llvm_features) == ("avx2", "x86-64-v3", "")
    tier_env("GENERIC", TIERS["avx512"].requires)
    assert current_target().name == "generic"


def test_unknown_and_unavailable_tiers_are_refused_by_name(tier_env):
    tier_env("avx1024", TIERS["avx512"].requires)
    with pytest.raises(BackendError, match=r"KEYDNN_CPU_TARGET='avx1024' is not a CPU target; supported: native, "
                                           r"avx512, avx2, generic"):
        current_target()
    tier_env("avx512", frozenset({"AVX2", "FMA3"}))
    with pytest.raises(BackendError, match=r"lacks \(AVX512BW, AVX512DQ, AVX512F, AVX512VL\).*'avx2' tier"):
        current_target()


def test_the_tier_is_part_of_the_compile_cache_key(tier_env):
    from keydnn.backends.numba_cpu.codegen.cpu import cpu_identity

    identities = set()
    for tier in ("native", "avx2", "generic"):
        tier_env(tier, TIERS["avx512"].requires)
        cpu_identity.cache_clear()
        identities.add(cpu_identity())
    cpu_identity.cache_clear()
    assert len(identities) == 3


def _objdump() -> str | None:
    return shutil.which("objdump")


@pytest.mark.parametrize("tier", ["avx2", "generic"])
def test_forced_tier_runs_and_uses_only_its_registers(tier, tmp_path):
    """A fresh process with the tier forced: the model matches the reference interpreter, and its prebuilt
    library uses no wider vector register than the tier has (AVX-512's zmm, AVX2's ymm)."""
    if tier != "generic" and not TIERS[tier].requires <= target_mod._cpu_features():
        pytest.skip(f"this CPU lacks the {tier} tier")
    script = (
        "import numpy as np, keydnn\n"
        "from keydnn.ir import run_reference\n"
        "from keydnn.backends.numba_cpu.codegen.target import current_target\n"
        f"m = keydnn.load({str(tmp_path / 'seed.json')!r})\n"
        "x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype('f4')\n"
        "err = float(np.abs(m(x) - run_reference(m.graph, x)[0]).max())\n"
        "print(current_target().name, err)\n"
    )
    env = {**os.environ, ENV: tier, "KEYDNN_CACHE_DIR": str(tmp_path / "cache"), "KEYDNN_ISOLATE_READER": "0"}
    subprocess.run([sys.executable, "-m", "keydnn", "convert", "--src", str(ROOT / "examples" / "seed_cnn.h5"),
                    "--dst", str(tmp_path / "seed.json")], check=True, env=env, cwd=tmp_path, capture_output=True)
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    name, err = proc.stdout.split()
    assert name == tier and float(err) < 1e-5
    libraries = list((tmp_path / "cache").rglob("graph.so"))
    if not libraries or _objdump() is None:
        pytest.skip("no prebuilt library (no C compiler) or no objdump to read it")
    text = subprocess.run([_objdump(), "-d", str(libraries[0])], capture_output=True, text=True).stdout
    assert "%zmm" not in text
    if tier == "generic":
        assert "%ymm" not in text
    else:
        assert "%ymm" in text


def test_a_tier_forced_after_numba_compiled_is_refused(tier_env, monkeypatch):
    """The generated code must be what the cache key says: numba's target is fixed once it has compiled."""
    pytest.importorskip("numba")
    import numba

    numba.njit(lambda a: a + 1)(1)  # numba's code generator now exists in this process
    if target_mod.native_tier() == "generic":
        pytest.skip("no narrower tier to force")
    tier_env("generic")
    import numba.core.config as config

    monkeypatch.setattr(config, "CPU_NAME", None)
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    with pytest.raises(BackendError, match="set it before the first model is compiled"):
        target_mod.apply_to_numba()
