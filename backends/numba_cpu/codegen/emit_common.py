"""What the compute emitters share: the fused activation as a micro-kernel epilogue, the GEMM tile height,
filters packed for the GEMM tiles, and the cache-geometry rules that size strips and spot L1 set conflicts.

They sit in their own module because conv2d (``emit_conv``, ``emit_conv_vectors``), dense (``emit_nn``), the
folded transposed conv (``emit_convt``) and conv3d (``emit_3d``) all store through the same micro-kernel
epilogues and tile the same way; one definition keeps their generated code consistent.
"""

from __future__ import annotations

import math

import numpy as np

from keydnn.backends.numba_cpu.codegen.codes import LINEAR, RELU, RELU0, encode_activation
from keydnn.backends.numba_cpu.codegen.program import EmitContext, LayoutUnsupported
from keydnn.backends.numba_cpu.codegen.target import current_target

__all__ = ["conv_operands", "kernel_activation", "post_activation", "act_args", "require_nchw", "panel_columns", "set_conflict",
           "pack_conv_weights", "conv_rows", "PANEL_BYTES", "L1_WAY_BYTES", "L1_WAYS"]

#: Bytes a conv strip's panel may take (it should stay in L2).
PANEL_BYTES = 1 << 18
#: L1 data cache geometry the tiling assumes (bytes per way, ways): lines whose addresses differ by a multiple
#: of the way size share a set. Zen 4/5 and recent Intel cores have 4 KiB ways and 8-12 of them.
L1_WAY_BYTES, L1_WAYS = 4096, 12


def kernel_activation(op) -> tuple[int, tuple, tuple]:
    """(micro-kernel act code, its params text, the full epilogue) for a fused activation."""
    act = encode_activation(getattr(op, "activation", None))
    code = act[0]
    if code == RELU0:
        return 1, (0.0, 0.0, 0.0, 0.0), act
    if code == RELU:
        return 2, tuple(float(p) for p in act[1:]), act
    return 0, (0.0, 0.0, 0.0, 0.0), act


def post_activation(act: tuple) -> bool:
    """Whether the epilogue must run after the micro-kernel's store (anything but relu / linear)."""
    return act[0] not in (LINEAR, RELU0, RELU)


def require_nchw(ctx: EmitContext) -> None:
    """Refuse, by name, a 2-D op whose layout the NCHW kernels cannot read."""
    layout = getattr(ctx.op, "layout", "NCHW")
    if layout != "NCHW":
        raise LayoutUnsupported(f"{ctx.op.kind} with layout {layout} (kernels are NCHW; run canonicalize-layout)")


def panel_columns(depth: int, pixels: int, slab: int, itemsize: int) -> int:
    """Strip width: whole slabs, as many as keep the panel within PANEL_BYTES, at most the image."""
    fit = max(slab, (PANEL_BYTES // (itemsize * max(depth, 1))) // slab * slab)
    return min(fit, -(-pixels // slab) * slab)


def set_conflict(pitch_bytes: int, rows: int) -> bool:
    """Whether one line from each of ``rows`` rows ``pitch_bytes`` apart overloads its L1 set (more than half
    the ways per set). A channels-first tensor's planes are such rows: a 32x32 float32 plane is exactly one
    way, so a tile touching 32 planes evicted itself, and a 1x1 conv reading its input in place ran at 74% and
    a channel-vector conv storing into such planes at 30% of the speed with the planes 64 bytes further apart
    (measured)."""
    sets = min(L1_WAY_BYTES // 64, L1_WAY_BYTES // math.gcd(pitch_bytes, L1_WAY_BYTES))
    return rows > sets * (L1_WAYS // 2)


def act_args(act: tuple) -> tuple:
    """The epilogue as the trailing arguments of an ``act_copy`` call (code, then float parameters)."""
    return (act[0],) + tuple(float(a) for a in act[1:])


def pack_conv_weights(ctx: EmitContext, w: np.ndarray, mr: int) -> tuple[int, int]:
    """Weights as [block of mr output channels][tap k][mr] (zero rows past the last channel)."""
    o_ch = w.shape[0]
    depth = w[0].size
    blocks = -(-o_ch // mr)
    # packed in the graph's dtype (``ctx.weight`` stores that anyway): a float64 staging copy doubled the
    # memory a large model's warm start peaked at (ResNet50: 200 MB of it)
    packed = np.zeros((blocks * mr, depth), dtype=ctx.dtype)
    packed[:o_ch] = np.asarray(w).reshape(o_ch, depth)
    return ctx.weight(packed.reshape(blocks, mr, depth).transpose(0, 2, 1)), blocks


def conv_rows() -> int:
    """Output channels per conv GEMM tile: as many as the target's vector registers hold two vectors of
    (8 with 32 registers, 6 with 16: 8 x 2 accumulators would spill on AVX2)."""
    return current_target().gemm_rows


def conv_operands(ctx: EmitContext):
    """A conv2d's operands and sizes, unpacked once for every conv emitter:
    ``(x, y, w, b, (o_ch, cg, kh, kw), (c, h, wd), (oh, ow))``; ``b`` is None without a bias."""
    w = ctx.constant(1)
    b = ctx.constant(2)
    _, oh, ow = ctx.out.sample
    return ctx.ins[0], ctx.out, w, b, w.shape, ctx.ins[0].sample, (oh, ow)
