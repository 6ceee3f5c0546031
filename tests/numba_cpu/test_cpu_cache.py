"""numba-cpu compile cache across processes (load, damage, races) and the kernel helpers against NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from cpu_helpers import (
    randn,
    seed_cnn,
)

# -- the compile cache across processes -----------------------------------------------------------

_CHILD = r"""
import json, sys
import numpy as np
import keydnn
from keydnn.backends.numba_cpu.runtime import cache as cg_cache
from keydnn.ir import run_reference
events = []
cg_cache.add_compile_listener(events.append)
model = keydnn.load({artifact!r})
x = np.random.default_rng(5).standard_normal((3, 1, 28, 28)).astype(np.float32)
np.testing.assert_allclose(model(x), run_reference(model.graph, x)[0], rtol=1e-5, atol=1e-5)
ends = [dict(e, numba="numba" in sys.modules) for e in events if e["event"] == "end"]
print("EVENTS", json.dumps(ends))
"""


def _child(cache_dir, *, wait: bool = True):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import keydnn

    artifact = Path(cache_dir).parent / "seed_cnn.json"
    if not artifact.exists():
        keydnn.Sequential(seed_cnn()).save(artifact)
    env = {**os.environ, "KEYDNN_CACHE_DIR": str(cache_dir), "KEYDNN_CACHE": "1"}
    for name in ("NUMBA_CACHE_DIR", "KEYDNN_AOT", "KEYDNN_CPU_MODE"):
        env.pop(name, None)
    code = _CHILD.format(artifact=str(artifact))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return _finish(proc) if wait else proc


def _finish(proc) -> list[dict]:
    import json

    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("EVENTS"))
    return json.loads(line.split(" ", 1)[1])


def _entry_dir(cache_dir):
    (entry,) = [d for d in (cache_dir / "numba-cpu").iterdir() if (d / "graph.py").exists()]
    return entry


def _loads(cache) -> tuple[bool, str, bool]:
    (event,) = _child(cache)
    return event["cached"], event["kind"], event["numba"]


@pytest.mark.slow
def test_cache_second_process_loads_and_damage_is_rebuilt(tmp_path) -> None:
    """A second process loads the compiled code (the prebuilt library, without numba, where a C compiler
    is at hand); a damaged entry is detected and rebuilt, never loaded."""
    from keydnn.backends.numba_cpu.runtime.aot import compiler

    prebuilt = ("aot", False) if compiler() is not None else ("jit", True)
    cache = tmp_path / "cache"
    assert _loads(cache)[0] is False
    assert _loads(cache) == (True, *prebuilt)
    entry = _entry_dir(cache)
    numba_files = sorted((entry / "__pycache__").glob("graph.*"))
    assert any(p.suffix == ".nbi" for p in numba_files) and any(p.suffix == ".nbc" for p in numba_files)
    damages = {
        "truncated source": lambda: (entry / "graph.py").write_text((entry / "graph.py").read_text()[:200]),
        "bad index": lambda: next((entry / "__pycache__").glob("graph.*.nbi")).write_bytes(b"\x80\x04garbage"),
        "corrupt data": lambda: next((entry / "__pycache__").glob("graph.*.nbc")).write_bytes(b"\x00" * 64),
        "bad manifest": lambda: (entry / "manifest.json").write_text("{not json"),
    }
    for what, damage in damages.items():
        damage()
        assert _loads(cache)[0] is False, what
    if prebuilt[0] == "aot":  # a damaged library is ignored (numba's cache serves) and rebuilt
        (entry / "graph.so").write_bytes((entry / "graph.so").read_bytes()[:1000])
        assert _loads(cache) == (True, "jit", True)
    assert _loads(cache) == (True, *prebuilt)


def test_two_processes_compiling_one_graph_into_one_cache(tmp_path) -> None:
    cache = tmp_path / "cache"
    procs = [_child(cache, wait=False) for _ in range(2)]
    results = [_finish(p) for p in procs]
    assert sorted(e["cached"] for r in results for e in r) in ([False, True], [False, False])
    from keydnn.backends.numba_cpu.runtime.aot import compiler

    prebuilt = ("aot", False) if compiler() is not None else ("jit", True)
    assert _loads(cache) == (True, *prebuilt)


@pytest.mark.slow
def test_damaged_stored_thunk_is_rebuilt_not_linked(tmp_path) -> None:
    """Thunk objects are shared by cache entries; one whose object does not define its recorded symbol (what two
    processes writing object and name separately used to leave behind) is rebuilt, and the library loads."""
    from keydnn.backends.numba_cpu.runtime.aot import compiler

    if compiler() is None:
        pytest.skip("no C compiler: no prebuilt libraries")
    cache = tmp_path / "cache"
    assert _loads(cache)[0] is False
    stored = sorted((cache / "numba-cpu" / "objects").glob("*.thunk"))
    assert stored
    for path in stored:  # keep the format, swap in a symbol no object defines
        head, name, rest = path.read_bytes().split(b"\n", 2)
        path.write_bytes(b"\n".join([head, name[:-3] + b"xyz", rest]))
    entry = _entry_dir(cache)
    (entry / "graph.so").unlink()
    (entry / "manifest.json").unlink()
    assert _loads(cache)[0] is False  # no manifest: compiled again, library linked from rebuilt thunks
    assert _loads(cache) == (True, "aot", False)


@pytest.mark.parametrize("case", [
    # C, H, W, KH, KW, sh, sw, dh, dw, pt, pl, p0, npix
    (3, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 0, 64),
    (2, 9, 7, 3, 2, 2, 2, 1, 1, 1, 0, 5, 10),
    (2, 10, 10, 3, 3, 1, 2, 2, 1, 2, 3, 3, 17),
    (1, 5, 6, 1, 1, 2, 3, 1, 1, 0, 0, 1, 3),
    (2, 4, 4, 3, 3, 1, 1, 1, 1, 3, 3, 7, 20),
])
def test_im2col_panel_matches_numpy(case: tuple) -> None:
    """The conv panel packer against a direct NumPy unfold, strips starting mid-row included."""
    from keydnn.backends.numba_cpu.kernels.helpers import im2col_panel

    c, h, w, kh, kw, sh, sw, dh, dw, pt, pl = case[:11]
    p0, npix = case[11:]
    oh = (h + 2 * pt - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pl - dw * (kw - 1) - 1) // sw + 1
    x = randn(c, h, w, seed=5)
    ldp = npix + 3
    got = np.full(c * kh * kw * ldp + 8, np.nan, dtype=np.float32)
    im2col_panel(x.reshape(-1), 0, c, h, w, kh, kw, sh, sw, dh, dw, pt, pl, ow, p0, npix, got, 0, ldp)
    for ci in range(c):
        for ki in range(kh):
            for kj in range(kw):
                k = (ci * kh + ki) * kw + kj
                for j in range(npix):
                    oy, ox = divmod(p0 + j, ow)
                    assert oy < oh
                    iy, ix = oy * sh + ki * dh - pt, ox * sw + kj * dw - pl
                    want = x[ci, iy, ix] if 0 <= iy < h and 0 <= ix < w else 0.0
                    assert got[k * ldp + j] == want, (ci, ki, kj, j)


@pytest.mark.parametrize("case", [
    # C, H, W, pt, pb, pl, pr, r_lo, r_hi
    (3, 8, 8, 1, 1, 1, 1, 0, 10),
    (2, 5, 37, 2, 0, 0, 3, 1, 6),  # rows wider than two vectors, a masked tail
    (1, 4, 16, 0, 0, 0, 0, 0, 4),  # no padding: a plain copy
    (2, 3, 5, 3, 3, 2, 2, -2, 20),  # a row range past both ends is clipped
    (2, 6, 6, 1, 1, 1, 1, 4, 4),  # an empty range writes nothing
])
def test_pad_rows_matches_numpy(case: tuple) -> None:
    """The vectorized row padder against np.pad: requested rows padded, every other element untouched."""
    from keydnn.backends.numba_cpu.kernels.helpers import pad_rows

    c, h, w, pt, pb, pl, pr, r_lo, r_hi = case
    hp, wp = h + pt + pb, w + pl + pr
    x = randn(c, h, w, seed=7)
    off = 5
    got = np.full(off + c * hp * wp + 16, np.nan, dtype=np.float32)
    pad_rows(x.reshape(-1), 0, c, h, w, got, off, hp, wp, pt, pl, r_lo, r_hi)
    want = np.full_like(got, np.nan)
    padded = np.pad(x, ((0, 0), (pt, pb), (pl, pr)))
    view = want[off:off + c * hp * wp].reshape(c, hp, wp)
    lo, hi = max(r_lo, 0), min(r_hi, hp)
    view[:, lo:hi] = padded[:, lo:hi]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("lanes,dtype", [(16, "float32"), (8, "float32"), (8, "float64"), (4, "float64")])
def test_vstore_transposed_writes_rows_by_columns(lanes: int, dtype: str) -> None:
    """The channel-vector conv tiles' store: lane l of vector m at index + m + l * stride, for m < rows and
    l < cols; tiles taller than a vector go in groups of L, and nothing outside the tile is written."""
    import numba

    from keydnn.backends.numba_cpu.kernels.simd import vload, vstore_transposed

    @numba.njit
    def store6(src, dst, index, stride, rows, cols):
        L = lanes
        vstore_transposed(dst, index, stride, rows, cols, vload(src, 0, L), vload(src, L, L), vload(src, 2 * L, L),
                          vload(src, 3 * L, L), vload(src, 4 * L, L), vload(src, 5 * L, L))

    for rows in (6, 5, 1, 0):
        for cols in (lanes, 3, 0):
            src = np.arange(1, 6 * lanes + 1).astype(dtype)
            got = np.zeros(900, dtype)
            store6(src, got, 7, 50, rows, cols)
            want = np.zeros(900, dtype)
            for m in range(rows):
                for lane in range(cols):
                    want[7 + m + lane * 50] = src[m * lanes + lane]
            np.testing.assert_array_equal(got, want, err_msg=f"rows={rows} cols={cols}")
