"""Writes ``ukernels.py``: the register-blocked GEMM micro-kernels, one function per tile shape.

A micro-kernel computes an ``MR x (NV * L)`` tile of ``C = A @ B`` over a
depth ``K`` with ``MR * NV`` vector accumulators held in SIMD registers
(``L`` lanes each), then adds the bias, applies a relu-family activation and
stores the tile. Its operands are flat arrays and offsets, so one compiled
function serves every layer. Every stride the inner loop uses is a literal
or a table entry: a runtime stride there costs an induction register per
tile row, and with eight rows the row addresses spilled (dense ran at 70% of
this form's speed).

Dense kernels (``mk_*``; rows are samples):

* ``A(m, k) = A[a_off + min(m, rows - 1) * a_rs + k]`` (broadcast to a vector);
* ``B(k, v) = B[b_off + k * 4L + v * L]`` (weights packed in panels of
  ``4L`` columns);
* ``C(m, v) = C[c_off + m * c_rs + v * L]``: row ``m < rows`` is stored, and
  vector ``v`` with ``min(L, cols - v * L)`` lanes (a masked store at an edge);
* bias: ``bias_mode`` 0 none, 2 one vector per column block
  (``bias[bias_off + v * L]``, masked);
* ``act``: 0 none, 1 relu, 2 Keras relu with ``(threshold, max_value,
  has_max, negative_slope)`` in ``p0..p3``; the caller applies other
  activations after the store.

Packed conv kernels (``mkp_*``; rows are output channels, implicit GEMM and
im2col panels):

* ``A(m, k) = A[a_off + k * MR + m]`` (the filters packed ``[k][m]``);
* ``B(k, v) = B[b_off + T[t_off + k] + v * b_vs]`` (a vector load; the int64
  table ``T`` of depth offsets lets a conv read its zero-padded input directly:
  ``T[k]`` is the offset of filter tap ``k`` = (c, ki, kj); a packed panel
  has ``T[k] = k * stride``);
* ``C(m, v) = C[c_off + m * c_rs + v * c_vs]``: row ``m < rows`` is stored, and
  vector ``v`` with ``min(L, c_vs, cols - v * c_vs)`` lanes: ``c_vs = L`` puts
  the vectors side by side on one row, a smaller ``c_vs`` on consecutive short
  rows (a conv's output rows narrower than ``L``);
* bias: ``bias_mode`` 1 one value per row (``bias[bias_off + m]``), or 0;
  activations as above.

``mkpb_*`` runs a packed kernel over ``blocks`` consecutive blocks of ``MR``
output channels at one tile position (one thunk call instead of one per block).

The channel-vector kernels (``mkc_*``, for convolutions on small or strided
images) swap the roles: vectors run along output channels and rows are
output pixels, so nothing is wasted on narrow rows and no im2col panel is
packed. Their operands:

* ``A(m, k) = A[a_off + P[p_off + min(m, rows - 1)] + T[t_off + k]]`` (a
  broadcast: ``P[p]`` is where output pixel ``p``'s window starts in the
  zero-padded input, ``T[k]`` the offset of filter tap ``k`` within it);
* ``B(k, v) = B[b_off + k * NV * L + v * L]`` (the filters packed
  ``[k][channel]`` for one block of ``NV * L`` output channels);
* lane ``l`` of ``C(m, v)`` goes to ``C[c_off + m + (v * L + l) * c_cs]``
  (channels-first: ``c_cs`` is the plane size), for rows ``m < rows`` and
  channels ``v * L + l < cols``, transposed in registers
  (``simd.vstore_transposed``); bias is one vector per column block
  (``bias_mode`` 2) and the activations are as above.

The depthwise kernels (``dwk_{KH}x{KW}s{SW}``) take ``dw_conv_planes``'s
operands less the filter shape and horizontal stride, which they fix: every
tap is unrolled and its offset in the phase-split padded plane is a literal
plus ``WQ``.

numba caches compiled functions by source file, so the kernels live in a real
module written by ``write_ukernels`` (a test checks it is current) rather
than being exec'd at import.
"""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["TILES", "PACKED_TILES", "CHANNEL_TILES", "DEPTHWISE_SHAPES", "LANES", "kernel_name", "channel_kernel_name",
           "depthwise_kernel_name", "blocks_kernel_name", "render_ukernels", "write_ukernels", "UKERNELS_PATH"]

logger = logging.getLogger(__name__)

#: (MR, NV) of the dense kernels: rows (samples) x vectors of a 4L-column weight panel (NV <= 4); the
#: two-vector tile has ``Target.gemm_rows`` rows (8 with 32 vector registers, 6 with 16).
TILES: tuple[tuple[int, int], ...] = ((1, 4), (4, 2), (8, 2), (6, 2))
#: Tile shapes with A packed ``[k][m]`` (conv weights); (6, 2) is the conv tile of 16-register targets (AVX2:
#: 12 accumulators, two loaded vectors and a broadcast), (8, 2) of 32-register ones.
PACKED_TILES: tuple[tuple[int, int], ...] = ((8, 2), (12, 2), (8, 3), (6, 2))
#: (MR, NV) of the channel-vector conv kernels: output pixels x vectors of output channels. At most 8 pixel
#: rows: each row keeps an address in a general register, and 12 or 14 rows spilled them (55-85 GMAC/s
#: against 105-125 for these, measured on AVX-512). The last three are the tiles of 16-register targets
#: (``Target.channel_rows``: at most 12 accumulators).
CHANNEL_TILES: tuple[tuple[int, int], ...] = ((6, 4), (8, 3), (8, 2), (8, 1), (3, 4), (4, 3), (6, 2))
#: (KH, KW, stride) of the depthwise kernels with every tap unrolled (dilation 1, the same stride along both
#: axes); other depthwise filters run the general ``cg_depthwise.dw_conv_planes``.
DEPTHWISE_SHAPES: tuple[tuple[int, int, int], ...] = ((3, 3, 1), (3, 3, 2), (5, 5, 1), (5, 5, 2))
#: Output rows of a depthwise tile: independent accumulator chains, enough to hide the fused multiply-add's
#: latency (one chain per output vector ran a 9-deep dependent chain: a quarter of the throughput).
DW_ROWS = 8
#: Vector lengths a kernel may be compiled for (512-bit f32, 256-bit f32 / 512-bit f64, 256-bit f64).
LANES: tuple[int, ...] = (16, 8, 4)

UKERNELS_PATH = Path(__file__).resolve().parents[1] / "kernels" / "ukernels.py"

_HEADER = '''"""GEMM micro-kernels and unrolled depthwise conv kernels (generated by ``ukernel_source.write_ukernels``; do not edit by hand).

See ``keydnn.backends.numba_cpu.codegen.ukernel_source`` for the operand conventions.
"""

from __future__ import annotations

import numba

from keydnn.backends.numba_cpu.kernels.depthwise import pad_plane_phased
from keydnn.backends.numba_cpu.jit_options import HELPER_JIT_OPTIONS as JIT_OPTIONS
from keydnn.backends.numba_cpu.kernels.simd import (
    load_at, vadd, vbroadcast, vfma, vload, vload_n, vmax_zero, vrelu_general, vsplat, vstore, vstore_n,
    vstore_transposed, vzero,
)

__all__ = ["UKERNELS"]
'''


def kernel_name(mr: int, nv: int, lanes: int, packed: bool = False) -> str:
    """``mk_*`` reads A with any strides; ``mkp_*`` reads A packed as ``[k][m]`` (``a_rs``/``a_ks`` unused)."""
    return f"mk{'p' if packed else ''}_{mr}x{nv}_l{lanes}"


def channel_kernel_name(mr: int, nv: int, lanes: int) -> str:
    """The channel-vector conv kernel of an ``mr`` pixels x ``nv`` channel vectors tile."""
    return f"mkc_{mr}x{nv}_l{lanes}"


def blocks_kernel_name(mr: int, nv: int, lanes: int) -> str:
    """The packed kernel looping over consecutive blocks of ``mr`` output channels (``mkpb_*``)."""
    return f"mkpb_{mr}x{nv}_l{lanes}"


def _render_blocks(mr: int, nv: int, lanes: int) -> str:
    """``blocks`` calls of the packed kernel, one per block of ``mr`` output channels, the same B each time:
    the filters of block ``ob`` at ``a_off + ob * K * mr``, its rows of C at ``c_off + ob * mr * c_rs``, its bias
    at ``bias_off + ob * mr``; ``rows`` counts the output channels from the first block on. One call instead
    of one per block: a thunk call costs about 60 cycles, a fifth of a 1x1 conv tile with 32 input channels."""
    name, tile = blocks_kernel_name(mr, nv, lanes), kernel_name(mr, nv, lanes, True)
    return "\n".join([
        "",
        "",
        "@numba.njit(**JIT_OPTIONS)",
        f"def {name}(K, A, a_off, B, b_off, T, t_off, b_vs, C, c_off, c_rs, c_vs, rows, cols, bias, bias_off,",
        "        bias_mode, act, p0, p1, p2, p3, blocks):",
        "    for ob in range(blocks):",
        f"        {tile}(K, A, a_off + ob * K * {mr}, B, b_off, T, t_off, b_vs, C, c_off + ob * {mr} * c_rs, c_rs, c_vs,",
        f"             min({mr}, rows - ob * {mr}), cols, bias, bias_off + ob * {mr}, bias_mode, act, p0, p1, p2, p3)",
    ]) + "\n"


def depthwise_kernel_name(kh: int, kw: int, stride: int, lanes: int) -> str:
    """The depthwise kernel of ``kh x kw`` filters at ``stride`` along both axes, ``lanes`` columns a vector."""
    return f"dwk_{kh}x{kw}s{stride}_l{lanes}"


def _render_depthwise(kh: int, kw: int, st: int, lanes: int) -> str:
    """A depthwise conv over output channels ``o_lo..o_hi`` of one sample, as ``cg_depthwise.dw_conv_planes``
    (same operands, less the literal filter shape and strides) with the taps unrolled: each input plane is
    copied zero-padded and phase-split (``pad_plane_phased``; the zero border is written once per call, as
    every plane of a call has the same geometry), then tiles of ``DW_ROWS`` output rows x one vector of
    ``lanes`` columns accumulate ``kh * kw`` fused multiply-adds each.

    The tile walks its input rows once: each vector loaded from padded row ``q`` feeds every output row it
    belongs to (``q = m * st + ki``), so a 3x3 stride-1 tile loads 30 vectors for its 72 multiply-adds, and
    row addresses step by the row pitch instead of one register per row (24 of them spilled). A tile past the
    last output row reads the ``(DW_ROWS - 1) * st`` zeroed rows the caller adds after the plane and stores
    nothing there. Small filters keep their weights in registers for the whole plane."""
    name = depthwise_kernel_name(kh, kw, st, lanes)
    ind = "    "
    hoist = kh * kw <= 12
    extra = (DW_ROWS - 1) * st
    lines = [
        "",
        "",
        "@numba.njit(**JIT_OPTIONS)",
        f"def {name}(x, x_off, H, W, Wt, w_off, b_off, has_bias, y, y_off, OH, OW, o_lo, o_hi, og, P, p_off,",
        "        HP, WQ, pt, pl, act, p0, p1, p2, p3):",
        f"{ind}z = vzero(y, {lanes})",
        f"{ind}pitch = {st} * WQ",
        f"{ind}last = -1",
        f"{ind}for o in range(o_lo, o_hi):",
        f"{ind * 2}c = o // og",
        f"{ind * 2}if c != last:  # the first plane also zeroes the border and the {extra} rows after it",
        f"{ind * 3}pad_plane_phased(x, x_off + c * H * W, H, W, P, p_off, HP + {extra} if last == -1 else HP, WQ,",
        f"{ind * 3}                 {st}, pt, pl, last == -1)",
        f"{ind * 3}last = c",
        f"{ind * 2}bias = vsplat(load_at(Wt, b_off + o) if has_bias else 0.0, z)",
        f"{ind * 2}wb = w_off + o * {kh * kw}",
    ]
    if hoist:
        lines += [f"{ind * 2}w{t} = vbroadcast(Wt, wb + {t}, z)" for t in range(kh * kw)]
    ind3, ind4 = ind * 3, ind * 4
    lines += [
        f"{ind * 2}plane = y_off + o * OH * OW",
        f"{ind * 2}for i0 in range(0, OH, {DW_ROWS}):",
        f"{ind3}for j0 in range(0, OW, {lanes}):",
    ]
    acc = [f"a{m}" for m in range(DW_ROWS)]
    lines.append(f"{ind4}{' = '.join(acc)} = bias")
    lines.append(f"{ind4}rq = p_off + i0 * {st} * pitch + j0")
    for q in range(extra + kh):
        users = [(m, q - m * st) for m in range(DW_ROWS) if 0 <= q - m * st < kh]
        if q:
            lines.append(f"{ind4}rq += pitch")
        for kj in range(kw):
            terms = [f"{kj % st} * WQ" if kj % st else "", str(kj // st) if kj // st else ""]
            lines.append(f"{ind4}v = vload(P, {' + '.join(['rq'] + [t for t in terms if t])}, {lanes})")
            for m, ki in users:
                t = ki * kw + kj
                wt = f"w{t}" if hoist else f"vbroadcast(Wt, wb + {t}, z)"
                lines.append(f"{ind4}{acc[m]} = vfma({wt}, v, {acc[m]})")
    lines += activation(acc, ind4)
    lines.append(f"{ind4}n = min({lanes}, OW - j0)")
    lines.append(f"{ind4}at = plane + i0 * OW + j0")
    lines.append(f"{ind4}if n == {lanes} and i0 + {DW_ROWS} <= OH:")
    lines += [f"{ind4}    vstore(y, at + {m} * OW, {acc[m]})" for m in range(DW_ROWS)]
    lines.append(f"{ind4}else:")
    for m in range(DW_ROWS):
        guard = "" if m == 0 else f"if i0 + {m} < OH: "
        lines.append(f"{ind4}    {guard}vstore_n(y, at + {m} * OW, {acc[m]}, n)")
    return "\n".join(lines) + "\n"


def kernel_head(name: str, params: str, lanes: int, acc: list[list[str]], decorator: str = "@numba.njit(**JIT_OPTIONS)",
                ind: str = "    ") -> list[str]:
    """A micro-kernel's decorator, signature (``params`` then the epilogue's arguments) and zeroed accumulators."""
    lines = ["", "", decorator, f"def {name}({params}", "        bias_mode, act, p0, p1, p2, p3):",
             f"{ind}z = vzero(C, {lanes})"]
    return lines + [f"{ind}{' = '.join(row)} = z" for row in acc]


def column_counts(nv: int, lanes: int, ind: str) -> list[str]:
    """``n{v}``: the columns of vector ``v`` that exist (a ragged last tile stores fewer)."""
    return [f"{ind}n{v} = min({lanes}, max(0, cols - {v * lanes}))" for v in range(nv)]


def fma_rows(acc: list[list[str]], a_at: list[str], ind: str) -> list[str]:
    """One depth step: broadcast row ``m``'s ``A`` element (at ``a_at[m]``) and FMA it with every ``b{v}``."""
    lines = []
    for m, row in enumerate(acc):
        lines.append(f"{ind}a = vbroadcast(A, {a_at[m]}, z)")
        lines += [f"{ind}{a} = vfma(a, b{v}, {a})" for v, a in enumerate(row)]
    return lines


def column_bias(acc: list[list[str]], lanes: int, ind: str) -> list[str]:
    """``if bias_mode == 2``: one bias vector per column vector, added to every row."""
    lines = [f"{ind}if bias_mode == 2:"]
    for v in range(len(acc[0])):
        lines.append(f"{ind * 2}bv = vload_n(bias, bias_off + {v * lanes}, n{v}, {lanes})")
        lines += [f"{ind * 2}{row[v]} = vadd({row[v]}, bv)" for row in acc]
    return lines


def _epilogue(acc: list[list[str]], lanes: int, bias_row: bool, ind: str) -> list[str]:
    """Bias (mode 1 per row when ``bias_row``, else mode 2 per column vector of L) and the fused activation."""
    mr, nv = len(acc), len(acc[0])
    lines = []
    if bias_row:
        lines.append(f"{ind}if bias_mode == 1:")
        for m in range(mr):
            lines.append(f"{ind * 2}bv = vbroadcast(bias, bias_off + min({m}, rows - 1), z)")
            for v in range(nv):
                lines.append(f"{ind * 2}{acc[m][v]} = vadd({acc[m][v]}, bv)")
    else:
        lines += column_bias(acc, lanes, ind)
    return lines + activation([a for row in acc for a in row], ind)


def activation(accs: list[str], ind: str) -> list[str]:
    """The fused activation of every accumulator: ``act`` 1 relu, 2 Keras relu with ``p0..p3``."""
    inner = ind + "    "
    return ([f"{ind}if act == 1:"] + [f"{inner}{a} = vmax_zero({a})" for a in accs]
            + [f"{ind}elif act == 2:"] + [f"{inner}{a} = vrelu_general({a}, p0, p1, p2, p3)" for a in accs])


def _render_channel(mr: int, nv: int, lanes: int) -> str:
    name = channel_kernel_name(mr, nv, lanes)
    acc = [[f"c{m}_{v}" for v in range(nv)] for m in range(mr)]
    ind = "    "
    lines = kernel_head(name, "K, A, a_off, P, p_off, T, t_off, B, b_off, C, c_off, c_cs, rows, cols, bias, bias_off,",
                        lanes, acc)
    for m in range(mr):
        lines.append(f"{ind}ar{m} = a_off + load_at(P, p_off + min({m}, rows - 1))")
    lines += column_counts(nv, lanes, ind)
    lines.append(f"{ind}for k in range(K):")
    lines.append(f"{ind * 2}tk = load_at(T, t_off + k)")
    lines.append(f"{ind * 2}bo = b_off + k * {nv * lanes}")
    for v in range(nv):
        lines.append(f"{ind * 2}b{v} = vload(B, bo + {v * lanes}, {lanes})")
    lines += fma_rows(acc, [f"ar{m} + tk" for m in range(mr)], ind * 2)
    lines += _epilogue(acc, lanes, False, ind)
    for v in range(nv):
        tile = ", ".join(acc[m][v] for m in range(mr))
        lines.append(f"{ind}vstore_transposed(C, c_off + {v * lanes} * c_cs, c_cs, rows, n{v}, {tile})")
    return "\n".join(lines) + "\n"


def _render(mr: int, nv: int, lanes: int, packed: bool = False) -> str:
    name = kernel_name(mr, nv, lanes, packed)
    acc = [[f"c{m}_{v}" for v in range(nv)] for m in range(mr)]
    ind = "    "
    if packed:
        params = "K, A, a_off, B, b_off, T, t_off, b_vs, C, c_off, c_rs, c_vs, rows, cols, bias, bias_off,"
        vs = "c_vs"
    else:
        params = "K, A, a_off, a_rs, B, b_off, C, c_off, c_rs, rows, cols, bias, bias_off,"
        vs = str(lanes)
    decorator = '@numba.njit(**JIT_OPTIONS, inline="always")' if packed else "@numba.njit(**JIT_OPTIONS)"  # mkpb_* loop it
    lines = kernel_head(name, params, lanes, acc, decorator)
    if not packed:
        for m in range(mr):
            lines.append(f"{ind}ar{m} = a_off + min({m}, rows - 1) * a_rs")
    for v in range(nv):
        bound = f"min({lanes}, c_vs, max(0, cols - {v} * c_vs))" if packed else f"min({lanes}, max(0, cols - {v * lanes}))"
        lines.append(f"{ind}n{v} = {bound}")
    lines.append(f"{ind}for k in range(K):")
    if packed:
        lines.append(f"{ind * 2}bo = b_off + load_at(T, t_off + k)")
        for v in range(nv):
            lines.append(f"{ind * 2}b{v} = vload(B, bo + {v} * b_vs, {lanes})")
        lines.append(f"{ind * 2}ak = a_off + k * {mr}")
    else:
        lines.append(f"{ind * 2}bo = b_off + k * {4 * lanes}")
        for v in range(nv):
            lines.append(f"{ind * 2}b{v} = vload(B, bo + {v * lanes}, {lanes})")
    lines += fma_rows(acc, [f"ak + {m}" if packed else f"ar{m} + k" for m in range(mr)], ind * 2)
    lines += _epilogue(acc, lanes, packed, ind)
    # stores
    full = " and ".join(f"n{v} == {lanes}" for v in range(nv))
    lines.append(f"{ind}if {full}:")
    for m in range(mr):
        guard = "" if m == 0 else f"if rows > {m}: "
        stores = "; ".join(f"vstore(C, c_off + {m} * c_rs + {v} * {vs}, {acc[m][v]})" for v in range(nv))
        lines.append(f"{ind * 2}{guard}{stores}")
    lines.append(f"{ind}else:")
    for m in range(mr):
        guard = "" if m == 0 else f"if rows > {m}: "
        stores = "; ".join(f"vstore_n(C, c_off + {m} * c_rs + {v} * {vs}, {acc[m][v]}, n{v})" for v in range(nv))
        lines.append(f"{ind * 2}{guard}{stores}")
    return "\n".join(lines) + "\n"


def render_ukernels() -> str:
    """The text of ``ukernels.py``."""
    parts = [_HEADER]
    for lanes in LANES:
        for mr, nv in TILES:
            parts.append(_render(mr, nv, lanes))
        for mr, nv in PACKED_TILES:
            parts.append(_render(mr, nv, lanes, packed=True))
            parts.append(_render_blocks(mr, nv, lanes))
        for mr, nv in CHANNEL_TILES:
            parts.append(_render_channel(mr, nv, lanes))
    for lanes in LANES:
        for kh, kw, sw in DEPTHWISE_SHAPES:
            parts.append(_render_depthwise(kh, kw, sw, lanes))
    table = ",\n".join(f"    ({mr}, {nv}, {lanes}, False): {kernel_name(mr, nv, lanes)}"
                       for lanes in LANES for mr, nv in TILES)
    table += ",\n" + ",\n".join(f"    ({mr}, {nv}, {lanes}, True): {kernel_name(mr, nv, lanes, True)}"
                                for lanes in LANES for mr, nv in PACKED_TILES)
    table += ",\n" + ",\n".join(f"    ({mr}, {nv}, {lanes}, 'blocks'): {blocks_kernel_name(mr, nv, lanes)}"
                                for lanes in LANES for mr, nv in PACKED_TILES)
    table += ",\n" + ",\n".join(f"    ({mr}, {nv}, {lanes}, 'channel'): {channel_kernel_name(mr, nv, lanes)}"
                                for lanes in LANES for mr, nv in CHANNEL_TILES)
    table += ",\n" + ",\n".join(f"    ({kh}, {kw}, {sw}, {lanes}, 'depthwise'): {depthwise_kernel_name(kh, kw, sw, lanes)}"
                                for lanes in LANES for kh, kw, sw in DEPTHWISE_SHAPES)
    parts.append(f"\n\n#: (MR, NV, lanes, packed A, 'blocks' or 'channel'), or (KH, KW, stride, lanes, 'depthwise') -> kernel\n"
                 f"UKERNELS = {{\n{table},\n}}\n")
    return "".join(parts)


def write_ukernels(path: Path = UKERNELS_PATH) -> bool:
    """Regenerate ``ukernels.py``; returns whether it changed."""
    text = render_ukernels()
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


if __name__ == "__main__":  # pragma: no cover
    print("changed" if write_ukernels() else "up to date")
