"""Reference kernels of the 5-D volume ops (``keydnn.ir.ops.volume``), straight from their definitions.

Written directly in 3-D (windows over D, H and W at once), not as the
separable two-pass form the backends use, so that the backends' factoring is
checked against an independent statement of each op. Float64, NCDHW inside.
"""

from __future__ import annotations

import numpy as np

from keydnn.ir.reference import _epilogue, kernel

__all__: list[str] = []


def _to_cf(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCDHW" else x.transpose(0, 4, 1, 2, 3)


def _from_cf(x: np.ndarray, layout: str) -> np.ndarray:
    return x if layout == "NCDHW" else x.transpose(0, 2, 3, 4, 1)


def _windows(x: np.ndarray, kernel_: tuple, strides: tuple, dilations: tuple) -> np.ndarray:
    """(N, C, OD, OH, OW, KD, KH, KW) view of the windows of an already padded NCDHW array."""
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel_, dilations))
    win = np.lib.stride_tricks.sliding_window_view(x, spans, axis=(2, 3, 4))
    (sd, sh, sw), (dd, dh, dw) = strides, dilations
    return win[:, :, ::sd, ::sh, ::sw, ::dd, ::dh, ::dw]


def _pad(x: np.ndarray, pads: tuple, value: float) -> np.ndarray:
    widths = ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3]), (pads[4], pads[5]))
    return np.pad(x, widths, constant_values=value)


@kernel("conv3d")
def _conv3d(op, args):
    x = _pad(_to_cf(args[0], op.layout).astype(np.float64), op.pads, 0.0)
    w = args[1].astype(np.float64)
    o, cg = w.shape[:2]
    og = o // op.groups
    win = _windows(x, w.shape[2:], op.strides, op.dilations)
    parts = []
    for g in range(op.groups):
        wg = w[g * og:(g + 1) * og]
        parts.append(np.einsum("ncdhwijk,ocijk->nodhw", win[:, g * cg:(g + 1) * cg], wg, optimize=True))
    y = np.concatenate(parts, axis=1)
    if len(args) > 2:
        y = y + args[2].astype(np.float64)[None, :, None, None, None]
    return _from_cf(_epilogue(op, y), op.layout).astype(args[0].dtype)


@kernel("max_pool3d")
def _max_pool3d(op, args):
    x = _pad(_to_cf(args[0], op.layout).astype(np.float64), op.pads, -np.inf)
    y = _windows(x, op.kernel, op.strides, (1, 1, 1)).max(axis=(5, 6, 7))
    return _from_cf(y, op.layout).astype(args[0].dtype)


@kernel("avg_pool3d")
def _avg_pool3d(op, args):
    x = _to_cf(args[0], op.layout).astype(np.float64)
    total = _windows(_pad(x, op.pads, 0.0), op.kernel, op.strides, (1, 1, 1)).sum(axis=(5, 6, 7))
    ones = _pad(np.ones((1, 1) + x.shape[2:]), op.pads, 0.0)
    count = _windows(ones, op.kernel, op.strides, (1, 1, 1)).sum(axis=(5, 6, 7))
    return _from_cf(total / count, op.layout).astype(args[0].dtype)


@kernel("pad3d")
def _pad3d(op, args):
    x = _to_cf(args[0], op.layout)
    n, c, d, h, w = x.shape
    (fd, fh, fw), p = op.factors, op.pads
    out = np.zeros((n, c, (d - 1) * fd + 1 + p[0] + p[1], (h - 1) * fh + 1 + p[2] + p[3],
                    (w - 1) * fw + 1 + p[4] + p[5]), dtype=x.dtype)
    out[:, :, p[0]:p[0] + (d - 1) * fd + 1:fd, p[2]:p[2] + (h - 1) * fh + 1:fh, p[4]:p[4] + (w - 1) * fw + 1:fw] = x
    return _from_cf(out, op.layout)


@kernel("crop3d")
def _crop3d(op, args):
    x = _to_cf(args[0], op.layout)
    c = op.crops
    d, h, w = x.shape[2:]
    return np.ascontiguousarray(_from_cf(x[:, :, c[0]:d - c[1], c[2]:h - c[3], c[4]:w - c[5]], op.layout))


@kernel("upsample3d")
def _upsample3d(op, args):
    x = _to_cf(args[0], op.layout)
    for axis, f in zip((2, 3, 4), op.factors):
        x = np.repeat(x, f, axis=axis)
    return np.ascontiguousarray(_from_cf(x, op.layout))
