"""numba-cuda kernel of ``conv_lstm`` (ConvLSTM1D/2D).

Every step depends on the whole previous state (the convolution reads the
neighbours of each pixel), so the recurrence is one launch per step: one
thread per (row, pixel, filter) computes that unit's four gates from the
previous state and writes the next state into the other half of a
double-buffered scratch (h, h', c, c', last output). The length is the host
loop's bound: one compiled kernel for every length.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable, Sequence

import numpy as np

from keydnn.backends.numba_cuda.activations import make_activation
from keydnn.backends.numba_cuda.device import cuda
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, configure, grid_1d, register_kernel,
)
from keydnn.backends.epilogues import ACTIVATION_CODES, RELU0

__all__: list[str] = []

logger = logging.getLogger(__name__)

_RESULTS = {"output": 0, "state_h": 1, "state_c": 2}


def _code(name: str) -> int:
    return RELU0 if name == "relu" else ACTIVATION_CODES[name]


@functools.lru_cache(maxsize=None)
def _kernels(dtype_name: str, act_code: int, ract_code: int) -> tuple[Callable, Callable, Callable]:
    act = make_activation(dtype_name, act_code)
    ract = make_activation(dtype_name, ract_code)
    f0 = np.dtype(dtype_name).type
    zero, one = f0(0.0), f0(1.0)

    @cuda.jit
    def init(h0, c0, s, size, has_init):  # pragma: no cover - device code
        """scratch = [h, h', c, c', prev]: h and c from the initial states (or zeros), prev zero."""
        for i in range(cuda.grid(1), size, cuda.gridsize(1)):
            s[i] = h0[i] if has_init else zero
            s[2 * size + i] = c0[i] if has_init else zero
            s[4 * size + i] = zero

    @cuda.jit
    def step(xp, rk, mask, s, out, size, steps, hh, ww, f, kh, kw, t, k, cur, has_mask, zero_out, write_seq,
             slot):  # pragma: no cover - device code
        g = 4 * f
        top = (kh - 1) // 2
        left = (kw - 1) // 2
        h_old = cur * size
        h_new = (1 - cur) * size
        c_old = 2 * size + cur * size
        c_new = 2 * size + (1 - cur) * size
        prev = 4 * size
        for e in range(cuda.grid(1), size, cuda.gridsize(1)):
            q = e % f
            pix = e // f
            ow = pix % ww
            oh = (pix // ww) % hh
            n = pix // (ww * hh)
            keep = (not has_mask) or mask[n * steps + t] != zero
            if keep:
                xb = (((n * steps + t) * hh + oh) * ww + ow) * g
                si = xp[xb + q]
                sf = xp[xb + f + q]
                sc = xp[xb + 2 * f + q]
                so = xp[xb + 3 * f + q]
                for i in range(kh):
                    ih = oh + i - top
                    if ih < 0 or ih >= hh:
                        continue
                    for j in range(kw):
                        iw = ow + j - left
                        if iw < 0 or iw >= ww:
                            continue
                        hb = h_old + ((n * hh + ih) * ww + iw) * f
                        wb = (i * kw + j) * f * g
                        for ci in range(f):
                            hv = s[hb + ci]
                            w = wb + ci * g
                            si += hv * rk[w + q]
                            sf += hv * rk[w + f + q]
                            sc += hv * rk[w + 2 * f + q]
                            so += hv * rk[w + 3 * f + q]
                ig = ract(si, one, zero, zero, zero)
                fg = ract(sf, one, zero, zero, zero)
                og = ract(so, one, zero, zero, zero)
                cc = fg * s[c_old + e] + ig * act(sc, one, zero, zero, zero)
                hv = og * act(cc, one, zero, zero, zero)
                s[c_new + e] = cc
                s[h_new + e] = hv
                s[prev + e] = hv
            else:
                s[c_new + e] = s[c_old + e]
                s[h_new + e] = s[h_old + e]
                if zero_out:
                    s[prev + e] = zero
            if write_seq:
                out[((n * steps + slot) * hh + oh) * ww * f + ow * f + q] = s[prev + e]

    @cuda.jit
    def finish(s, out, size, cur, result):  # pragma: no cover - device code
        base = 4 * size if result == 0 else (cur * size if result == 1 else 2 * size + cur * size)
        for i in range(cuda.grid(1), size, cuda.gridsize(1)):
            out[i] = s[base + i]

    return init, step, finish


@register_kernel("conv_lstm")
def lower_conv_lstm(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    dtype = ctx.dtype
    rk = ctx.upload(ctx.constant(1))
    kh, kw = op.kernel
    f = op.filters
    init, step, finish = _kernels(dtype.name, _code(op.activation), _code(op.recurrent_activation))
    dummy = cuda.to_device(np.zeros(1, dtype=dtype))
    ctx._uploads.append(dummy)
    result = _RESULTS[op.result]
    seq = result == 0 and op.return_sequences

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        n, steps, hh, ww = in_shapes[0][:4]
        size = n * hh * ww * f
        grid = grid_1d(size)
        k_init, k_step, k_finish = (configure(kern, grid, THREADS) for kern in (init, step, finish))

        def launch(inputs: Sequence, out, scratch):
            rest = list(inputs[2:])
            mask = rest.pop(0) if op.masked else dummy
            h0 = rest[0] if rest else dummy
            c0 = rest[1] if len(rest) > 1 else dummy
            k_init(h0, c0, scratch, size, op.initial_states > 0)
            cur = 0
            for k in range(steps):
                t = steps - 1 - k if op.go_backwards else k
                k_step(inputs[0], rk, mask, scratch, out if seq else dummy, size, steps, hh, ww, f, kh, kw, t, k, cur,
                       op.masked, op.zero_output_for_mask, seq, k)
                cur = 1 - cur
            if not seq:
                k_finish(scratch, out, size, cur, result)
            return out

        return Prepared(launch, scratch=5 * size)

    return LoweredOp(prepare=prepare, description="conv_lstm")

