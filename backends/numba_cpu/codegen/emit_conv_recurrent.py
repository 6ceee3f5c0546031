"""Code generator of ``conv_lstm`` (ConvLSTM1D/2D, issue 17): the recurrence as one stage of generated code.

Like ``rnn`` (``cg_emit_seq``), the node holds only the recurrence: its input
convolution over every step is the ``conv2d`` before it, which the frontend
runs on time folded into the batch (``fold_time`` / ``unfold_time`` views:
``cg_program.Val.fold``), so the conv emitter already runs it as one
convolution over ``N * T`` images, threaded over images and channel blocks.
The recurrence is one stage with an item per batch sample (time steps are
sequential): ``cg_kernels_conv_seq.conv_lstm_sample`` runs every step, the
recurrent convolution as an im2col panel times the recurrent kernel on the
dense GEMM micro-kernels (the kernel packed here, once, in their ``4L``-column
panels), gates fused into one pass per pixel. ConvLSTM1D is the 2-D op on a
size-1 axis (``expand_dims`` / ``squeeze`` views around it).
"""

from __future__ import annotations

import logging

import numpy as np

from keydnn.backends.numba_cpu.codegen.cpu import dw_lanes
from keydnn.backends.numba_cpu.codegen.emit_seq import TANH_COEFFS, _RESULTS, _cell_code, _pack, _padded
from keydnn.backends.numba_cpu.codegen.program import Arr, EmitContext, Stage, Unsupported

__all__ = ["EMITTERS_CONV_SEQ", "HELPERS_CONV_SEQ", "scratch_elements", "band_rows", "PANEL_ELEMENTS"]

logger = logging.getLogger(__name__)

#: Helpers of ``cg_kernels_conv_seq`` (registered into ``cg_thunks.HELPERS``): name -> (module, parameter kinds).
HELPERS_CONV_SEQ: dict[str, tuple[str, str]] = {
    "conv_lstm_sample": ("helpers_conv_seq", "ai" + "aiii" + "ai" + "ai" + "ai" + "ai" + "ai" + "i" * 16),
}
#: Elements of the im2col panel of one band of output rows (64 KiB of float32: it stays in L2 with the kernel).
PANEL_ELEMENTS = 1 << 14


def _al(n: int) -> int:
    return -(-n // 16) * 16


def band_rows(hh: int, ww: int, width: int) -> int:
    """Output rows per im2col band: as many as fit ``PANEL_ELEMENTS``, at least one."""
    return max(1, min(hh, PANEL_ELEMENTS // max(1, ww * width)))


def scratch_elements(hh: int, ww: int, f: int, kh: int, kw: int, band: int) -> int:
    """Scratch ``conv_lstm_sample`` uses (its offsets, in the same order): two h buffers, c and the last
    output (``hh*ww*f`` each), the im2col panel and the gate pre-activations of one band."""
    return 4 * _al(hh * ww * f) + _al(band * ww * kh * kw * f) + _al(band * ww * 4 * f)


def emit_conv_lstm(ctx: EmitContext) -> None:
    op, y = ctx.op, ctx.out
    x, rest = ctx.ins[0], list(ctx.ins[1:])
    rk = ctx.constant(1)  # raises Unsupported where the recurrent kernel is not a constant
    if not x.batched or not y.batched or any(not v.batched for v in rest):
        raise Unsupported("conv_lstm operands without the batch axis")
    steps, hh, ww, g = x.sample
    f = op.filters
    kh, kw = op.kernel
    if g != 4 * f or rk.shape != (kh, kw, f, g):
        raise Unsupported(f"conv_lstm projection {x.sample} / recurrent kernel {rk.shape} do not fit {f} filters")
    width = kh * kw * f
    nb = 4 * dw_lanes()  # the micro-kernels' panel width (helpers_seq._matmul)
    u_off = _pack(ctx, np.asarray(rk, dtype=np.float64).reshape(width, g), nb)
    zb_off = _padded(ctx, np.zeros(g), nb)
    k_off = ctx.weight(np.asarray(TANH_COEFFS))
    mask = rest.pop(0) if op.masked else None
    h0 = rest[0] if rest else None
    c0 = rest[1] if len(rest) > 1 else None
    band = band_rows(hh, ww, width)
    scr = ctx.scratch(scratch_elements(hh, ww, f, kh, kw, band))
    m_arr, m_off = (mask, mask.at()) if mask is not None else (x, "0")
    h_arr, h_off = (h0, h0.at()) if h0 is not None else (x, "0")
    c_arr, c_off = (c0, c0.at()) if c0 is not None else (x, "0")
    call = ctx.call(
        "conv_lstm_sample", x, x.at(), Arr("W"), u_off, zb_off, k_off, m_arr, m_off, h_arr, h_off, c_arr, c_off,
        y, y.at(), Arr("A"), scr, steps, hh, ww, f, kh, kw, band, _cell_code(op.activation),
        _cell_code(op.recurrent_activation), int(op.go_backwards), int(op.zero_output_for_mask),
        _RESULTS[op.result], int(op.return_sequences), int(mask is not None), int(h0 is not None),
        int(ctx.dtype != np.float32))
    work = float(steps * hh * ww * (2 * width * g + 20 * g))
    ctx.stage(Stage(f"conv_lstm filters={f} kernel={kh}x{kw} steps={steps} {hh}x{ww}", [call], batched=True,
                    work=work))


EMITTERS_CONV_SEQ = {"conv_lstm": emit_conv_lstm}
