"""float64 reference convolution in numpy (no torch), with an error bound for float32."""

from __future__ import annotations

import numpy as np

from mmfast.ops._conv2d import choose_algorithm
from mmfast.ops._winograd_bound import winograd_error_bound

EPS32 = float(np.finfo(np.float32).eps)


def conv2d_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> np.ndarray:
    """Direct float64 convolution (ONNX semantics); pads = (top, left, bottom, right)."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    n, _, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.pad(x64, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (h + pads[0] + pads[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pads[1] + pads[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    mg = m // groups
    out = np.zeros((n, m, oh, ow))
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            patch = xp[:, :, r0 : r0 + (oh - 1) * stride[0] + 1 : stride[0]]
            patch = patch[:, :, :, c0 : c0 + (ow - 1) * stride[1] + 1 : stride[1]]
            patch = patch.reshape(n, groups, cg, oh, ow)
            wt = w64[:, :, i, j].reshape(groups, mg, cg)
            out += np.einsum("ngchw,gmc->ngmhw", patch, wt).reshape(n, m, oh, ow)
    if b is not None:
        out += b.astype(np.float64)[None, :, None, None]
    return out


def conv2d_tolerance(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> np.ndarray:
    """Per-output bound on float32 rounding: a length-K dot product accumulated in float32 (in
    any order, with or without FMA) errs by at most gamma_K * sum|w*x| with gamma_K ~ K*eps
    (Higham, Thm 3.1), plus the bias add and the final rounding: (K + 2)*eps*(sum|w*x| + |b|)."""
    k = w.shape[1] * w.shape[2] * w.shape[3]
    mag = conv2d_ref(
        np.abs(x), np.abs(w), None if b is None else np.abs(b), stride, pads, dilation, groups
    )
    return (k + 2) * EPS32 * mag + np.finfo(np.float32).tiny


def auto_tolerance(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
    groups: int,
) -> np.ndarray:
    """The bound of the kernel mmfast's algorithm="auto" runs for this layer: Winograd's
    (mmfast/ops/_winograd_bound.py) or the direct kernel's (conv2d_tolerance)."""
    kernel = (w.shape[2], w.shape[3])
    channels = (x.shape[1], w.shape[0])
    if choose_algorithm("auto", kernel, stride, dilation, groups, channels) == "winograd":
        return winograd_error_bound(x, w, b, pads)
    return conv2d_tolerance(x, w, b, stride, pads, dilation, groups)
