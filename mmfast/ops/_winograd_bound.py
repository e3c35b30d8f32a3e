"""The Winograd F(2x2, 3x3) convolution's rounding-error bound per output element, in float64
numpy (the derivation is in csrc/conv2d/conv2d_winograd.h):

    |y - y64| <= gamma_{C+9} * ( |A^T| [ sum_c (|G| |g_c| |G^T|) ⊙ (|B^T| |d_c| |B|) ] |A|
                                 + |bias| )
                 + 2^-149 * |A^T| [ sum_c |B^T| |d_c| |B| ] |A|  +  20 (C + 9) * 2^-150

Used by the tests and by ``mmfast check`` (mmfast/_kernel_check.py) to judge the kernel's output
against a float64 reference.
"""

from __future__ import annotations

import numpy as np

__all__ = ["winograd_error_bound"]

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
_U = 2.0**-24


def winograd_error_bound(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pads: tuple[int, int, int, int]
) -> np.ndarray:
    """Bound on |y - y64| for x (N, C, H, W), w (M, C, 3, 3), bias (M,) or None and ONNX pads
    (top, left, bottom, right) -> (N, M, OH, OW) float64."""
    n, c, h, wd = x.shape
    m = w.shape[0]
    oh, ow = h + pads[0] + pads[2] - 2, wd + pads[1] + pads[3] - 2
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    # The padded input the kernel reads: tiles of 4x4 every 2, zeros past the input's pads.
    xp = np.zeros((n, c, 2 * th + 2, 2 * tw + 2))
    rows = max(0, min(h, 2 * th + 2 - pads[0]))
    cols = max(0, min(wd, 2 * tw + 2 - pads[1]))
    xp[:, :, pads[0] : pads[0] + rows, pads[1] : pads[1] + cols] = np.abs(
        x[:, :, :rows, :cols].astype(np.float64)
    )
    s = xp.strides
    d = np.lib.stride_tricks.as_strided(
        xp, (n, c, th, tw, 4, 4), (s[0], s[1], 2 * s[2], 2 * s[3], s[2], s[3]), writeable=False
    )
    bt, g, at = np.abs(_BT), np.abs(_G), np.abs(_AT)
    v = np.einsum("ij,ncabjk,lk->ncabil", bt, d, bt, optimize=True)
    u = np.einsum("ij,mcjk,lk->mcil", g, np.abs(w.astype(np.float64)), g, optimize=True)
    prod = np.einsum("mcij,ncabij->nmabij", u, v, optimize=True)
    y = np.einsum("ij,nmabjk,lk->nmabil", at, prod, at, optimize=True)
    y = y.transpose(0, 1, 2, 4, 3, 5).reshape(n, m, 2 * th, 2 * tw)[:, :, :oh, :ow]
    if b is not None:
        y = y + np.abs(b.astype(np.float64))[None, :, None, None]
    # a transformed weight that underflows errs by up to 2^-150 absolute, times its V
    vsum = np.einsum("ij,nabjk,lk->nabil", at, v.sum(axis=1), at, optimize=True)
    vsum = vsum.transpose(0, 1, 3, 2, 4).reshape(n, 2 * th, 2 * tw)[:, None, :oh, :ow]
    k = c + 9
    bound: np.ndarray = k * _U / (1 - k * _U) * y + 2.0**-149 * vsum + 20 * k * 2.0**-150
    return bound
