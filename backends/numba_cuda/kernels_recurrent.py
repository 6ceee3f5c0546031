"""numba-cuda kernels of the sequence ops: ``rnn``, ``embedding``, ``sequence_mask``, ``masking``,
``repeat_vector``.

The recurrence runs one block per batch row: the row's h, c and pending
values live in shared memory, each thread owns units ``tid, tid + block, ...``
and computes all gates of its units (gates fused), and two barriers per step
separate reading the old state from committing the new one. The input
projection is the ``dense`` node before the ``rnn`` (one GEMM over all steps).
Lengths are launch arguments, so one compiled kernel serves every length.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Callable, Sequence

import numpy as np

from keydnn.backends.numba_cuda.activations import make_activation
from keydnn.backends.numba_cuda.device import cuda, simulator_enabled
from keydnn.backends.numba_cuda.lowering import (
    THREADS, LowerContext, LoweredOp, Prepared, Shape, Unsupported, configure, grid_1d, register_kernel,
)
from keydnn.backends.epilogues import ACTIVATION_CODES, RELU0

__all__ = ["MAX_UNITS"]

logger = logging.getLogger(__name__)

#: Units one block keeps in shared memory (4 arrays of this many elements).
MAX_UNITS = 1024
_CELLS = {"simple": 0, "lstm": 1, "gru": 2}
_RESULTS = {"output": 0, "state_h": 1, "state_c": 2}


def _code(name: str) -> int:
    return RELU0 if name == "relu" else ACTIVATION_CODES[name]


@functools.lru_cache(maxsize=None)
def _rnn_kernel(dtype_name: str, cell: int, act_code: int, ract_code: int, reset_after: bool) -> Callable:
    act = make_activation(dtype_name, act_code)
    ract = make_activation(dtype_name, ract_code)
    dt = {"float32": np.float32, "float64": np.float64}[dtype_name]
    f = np.dtype(dtype_name).type
    zero, one = f(0.0), f(1.0)
    split_gru = cell == 2 and not reset_after

    @cuda.jit
    def rnn(xp, u, rb, mask, h0, c0, out, steps, n, backwards, restore, zero_out, result, ret_seq, has_mask,
            has_init):  # pragma: no cover - device code
        b = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        bd = cuda.blockDim.x
        g = n * (4 if cell == 1 else 3 if cell == 2 else 1)
        hs = cuda.shared.array(MAX_UNITS, dt)
        cs = cuda.shared.array(MAX_UNITS, dt)
        hn = cuda.shared.array(MAX_UNITS, dt)
        prev = cuda.shared.array(MAX_UNITS, dt)
        for j in range(tid, n, bd):
            hs[j] = h0[b * n + j] if has_init else zero
            cs[j] = c0[b * n + j] if has_init and cell == 1 else zero
            prev[j] = zero
        cuda.syncthreads()
        for k in range(steps):
            t = steps - 1 - k if backwards else k
            keep = (not has_mask) or mask[b * steps + t] != zero
            base = (b * steps + t) * g
            if keep:
                if split_gru:  # z and r first; the h gate needs r of every unit
                    for j in range(tid, n, bd):
                        sz = rb[j]
                        sr = rb[n + j]
                        for i in range(n):
                            sz += hs[i] * u[i * g + j]
                            sr += hs[i] * u[i * g + n + j]
                        hn[j] = ract(xp[base + n + j] + sr, one, zero, zero, zero) * hs[j]  # r * h
                        cs[j] = ract(xp[base + j] + sz, one, zero, zero, zero)  # z (cs is unused by a GRU)
                    cuda.syncthreads()
                    for j in range(tid, n, bd):
                        sh = rb[2 * n + j]
                        for i in range(n):
                            sh += hn[i] * u[i * g + 2 * n + j]
                        hh = act(xp[base + 2 * n + j] + sh, one, zero, zero, zero)
                        z = cs[j]
                        prev[j] = z * hs[j] + (one - z) * hh  # pending h (committed below)
                    cuda.syncthreads()
                    for j in range(tid, n, bd):
                        hs[j] = prev[j]
                else:
                    for j in range(tid, n, bd):
                        if cell == 0:
                            s = rb[j]
                            for i in range(n):
                                s += hs[i] * u[i * g + j]
                            hn[j] = act(xp[base + j] + s, one, zero, zero, zero)
                        elif cell == 1:
                            si = rb[j]
                            sf = rb[n + j]
                            sc = rb[2 * n + j]
                            so = rb[3 * n + j]
                            for i in range(n):
                                hi = hs[i]
                                row = i * g
                                si += hi * u[row + j]
                                sf += hi * u[row + n + j]
                                sc += hi * u[row + 2 * n + j]
                                so += hi * u[row + 3 * n + j]
                            ig = ract(xp[base + j] + si, one, zero, zero, zero)
                            fg = ract(xp[base + n + j] + sf, one, zero, zero, zero)
                            og = ract(xp[base + 3 * n + j] + so, one, zero, zero, zero)
                            cc = fg * cs[j] + ig * act(xp[base + 2 * n + j] + sc, one, zero, zero, zero)
                            cs[j] = cc  # only this thread reads cs[j]
                            hn[j] = og * act(cc, one, zero, zero, zero)
                        else:
                            sz = rb[j]
                            sr = rb[n + j]
                            sh = rb[2 * n + j]
                            for i in range(n):
                                hi = hs[i]
                                row = i * g
                                sz += hi * u[row + j]
                                sr += hi * u[row + n + j]
                                sh += hi * u[row + 2 * n + j]
                            z = ract(xp[base + j] + sz, one, zero, zero, zero)
                            r = ract(xp[base + n + j] + sr, one, zero, zero, zero)
                            hh = act(xp[base + 2 * n + j] + r * sh, one, zero, zero, zero)
                            hn[j] = z * hs[j] + (one - z) * hh
                    cuda.syncthreads()
                    for j in range(tid, n, bd):
                        hs[j] = hn[j]
                        prev[j] = hn[j]
            elif zero_out:
                for j in range(tid, n, bd):
                    prev[j] = zero
            if result == 0 and ret_seq:
                slot = (steps - 1 - k) if restore else k
                for j in range(tid, n, bd):
                    out[(b * steps + slot) * n + j] = prev[j]
            cuda.syncthreads()
        for j in range(tid, n, bd):
            if result == 0 and not ret_seq:
                out[b * n + j] = prev[j]
            elif result == 1:
                out[b * n + j] = hs[j]
            elif result == 2:
                out[b * n + j] = cs[j]

    return rnn


@register_kernel("rnn")
def lower_rnn(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    if op.units > MAX_UNITS:
        raise Unsupported(f"rnn with {op.units} units; numba-cuda keeps at most {MAX_UNITS} in shared memory")
    dtype = ctx.dtype
    u, rb = ctx.upload(ctx.constant(1)), ctx.upload(ctx.constant(2))
    kernel = _rnn_kernel(dtype.name, _CELLS[op.cell], _code(op.activation), _code(op.recurrent_activation),
                         op.reset_after)
    dummy = cuda.to_device(np.zeros(1, dtype=dtype))
    ctx._uploads.append(dummy)
    block = 32 if simulator_enabled() else min(256, 32 * math.ceil(op.units / 32))
    flags = (op.go_backwards, op.restore_time_order, op.zero_output_for_mask, _RESULTS[op.result],
             op.return_sequences, op.masked, op.initial_states > 0)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        rows, steps = in_shapes[0][0], in_shapes[0][1]
        launch_kernel = configure(kernel, rows, block)

        def launch(inputs: Sequence, out, scratch):
            rest = list(inputs[3:])
            mask = rest.pop(0) if op.masked else dummy
            h0 = rest[0] if rest else dummy
            c0 = rest[1] if len(rest) > 1 else dummy
            launch_kernel(inputs[0], u, rb, mask, h0, c0, out, steps, op.units, *flags)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=f"rnn_{op.cell}")


@functools.lru_cache(maxsize=None)
def _embedding_kernel() -> Callable:
    @cuda.jit
    def gather(ids, table, out, count, dim, vocab, bad):  # pragma: no cover - device code
        for i in range(cuda.grid(1), count * dim, cuda.gridsize(1)):
            r = i // dim
            v = ids[r]
            k = int(v)
            if k < 0 or k >= vocab:
                bad[0] = 1
                out[i] = 0
            else:
                out[i] = table[k * dim + i - r * dim]

    return gather


@register_kernel("embedding")
def lower_embedding(ctx: LowerContext) -> LoweredOp:
    host = ctx.constant(1)
    vocab, dim = host.shape
    table = ctx.upload(host)
    kernel = _embedding_kernel()
    bad = cuda.to_device(np.zeros(1, dtype=np.int32))
    ctx._uploads.append(bad)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        count = math.prod(in_shapes[0])
        launch_kernel = configure(kernel, grid_1d(count * dim), THREADS)

        def launch(inputs: Sequence, out, scratch):
            launch_kernel(inputs[0], table, out, count, dim, vocab, bad)
            if bad.copy_to_host()[0]:  # an index outside the table: never read there, and say so
                bad.copy_to_device(np.zeros(1, dtype=np.int32))
                raise ValueError(f"embedding {ctx.node.name!r}: an index is outside the table [0, {vocab})")
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description="embedding")


@functools.lru_cache(maxsize=None)
def _mask_kernel(dtype_name: str) -> Callable:
    f = np.dtype(dtype_name).type
    zero, one = f(0.0), f(1.0)

    @cuda.jit
    def seq_mask(x, out, lanes, feat, value, apply):  # pragma: no cover - device code
        """Per (n, t) lane: 1 if any feature differs from value; ``apply``: zero the lane's features instead."""
        for i in range(cuda.grid(1), lanes, cuda.gridsize(1)):
            keep = False
            for j in range(feat):
                if x[i * feat + j] != value:
                    keep = True
            if apply:
                for j in range(feat):
                    out[i * feat + j] = x[i * feat + j] if keep else zero
            else:
                out[i] = one if keep else zero

    return seq_mask


@register_kernel("sequence_mask", "masking")
def lower_mask(ctx: LowerContext) -> LoweredOp:
    op = ctx.node.op
    apply = op.kind == "masking"
    kernel = _mask_kernel(ctx.dtype.name)
    value = ctx.in_types[0].np_dtype.type(op.mask_value) if ctx.in_types[0].np_dtype.kind == "f" else int(op.mask_value)

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        shape = in_shapes[0]
        lanes = shape[0] * shape[1]
        feat = shape[2] if len(shape) == 3 else 1
        launch_kernel = configure(kernel, grid_1d(lanes), THREADS)

        def launch(inputs: Sequence, out, scratch):
            launch_kernel(inputs[0], out, lanes, feat, value, apply)
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description=op.kind)


@functools.lru_cache(maxsize=None)
def _repeat_kernel() -> Callable:
    @cuda.jit
    def repeat(x, out, total, n, feat):  # pragma: no cover - device code
        for i in range(cuda.grid(1), total, cuda.gridsize(1)):
            b = i // (n * feat)
            out[i] = x[b * feat + i % feat]

    return repeat


@register_kernel("repeat_vector")
def lower_repeat_vector(ctx: LowerContext) -> LoweredOp:
    n = ctx.node.op.n
    kernel = _repeat_kernel()

    def prepare(in_shapes: tuple[Shape, ...], out_shape: Shape) -> Prepared:
        total = math.prod(out_shape)
        launch_kernel = configure(kernel, grid_1d(total), THREADS)

        def launch(inputs: Sequence, out, scratch):
            launch_kernel(inputs[0], out, total, n, in_shapes[0][1])
            return out

        return Prepared(launch)

    return LoweredOp(prepare=prepare, description="repeat_vector")


def _same_storage(inputs: Sequence, out, scratch):
    return inputs[0]


@register_kernel("fold_time", "unfold_time")
def lower_time_view(ctx: LowerContext) -> LoweredOp:
    """Flat row-major arrays: folding time into the batch (and back) moves nothing."""
    return LoweredOp(prepare=lambda in_shapes, out_shape: Prepared(_same_storage), allocates=False,
                     description=f"{ctx.node.op.kind} (view)")
