"""Attention weights over image regions -> a heat-map on the image (numpy only).

A captioner's decoder step reports, per generated token, its attention over the N positions
the image encoder made (``Caption.attention``, (tokens + 1, N)); an own VQA model reports one
row per glimpse (``Answer.attention``, (glimpses, N)). Those positions are a row-major grid of
image regions, after ``prefix`` positions that are not regions:

- mmfast's own CNN encoders: N = g * g (the last feature map's cells), prefix 0;
- ViT / BLIP vision towers: [CLS] then (S / patch)^2 patches, prefix 1;
- DeiT: [CLS] and the distillation token first, prefix 2.

The grid covers the part of the photo the model saw: all of it when the image is squashed
to a square, the centre crop's box when the preprocessing resizes then crops
(:func:`view_box`). :func:`heatmap` upsamples a row onto that box, pixel centres aligned with
the regions' centres (bilinear between them). At a size from :func:`display_size` (an odd
multiple of the grid) some pixel sits exactly on every cell's centre, so the heat-map's
brightest pixels are in the cell the row weights most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .preprocess import PreprocessConfig

__all__ = [
    "RegionLayout",
    "display_size",
    "heatmap",
    "region_grid",
    "region_layout",
    "view_box",
]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RegionLayout:
    """How a row of attention weights maps onto the image."""

    rows: int  # the region grid, row-major
    cols: int
    prefix: int  # leading positions that are not image regions ([CLS], distillation token)
    preprocess: PreprocessConfig  # which part of the photo the grid covers (view_box)

    @property
    def positions(self) -> int:
        return self.prefix + self.rows * self.cols


def region_layout(n_positions: int, preprocess: PreprocessConfig) -> RegionLayout:
    """The layout of N attention positions over a square model input: the one k in {0, 1, 2}
    leading non-region positions leaving a square number of regions. It is unique: two
    squares >= 1 never differ by 1 or 2, so at most one of N, N - 1, N - 2 is a square >= 1.
    ValueError when none is (a bundle whose attention is not over a square grid)."""
    if isinstance(n_positions, bool) or not isinstance(n_positions, int) or n_positions < 1:
        raise ValueError(f"n_positions: expected a positive integer, got {n_positions!r}")
    for prefix in (0, 1, 2):
        g = math.isqrt(n_positions - prefix) if n_positions > prefix else 0
        if g >= 1 and g * g == n_positions - prefix:
            return RegionLayout(g, g, prefix, preprocess)
    raise ValueError(
        f"n_positions: attention over {n_positions} positions is not a square grid of regions "
        "(after 0, 1 or 2 leading [CLS]-like positions)"
    )


def view_box(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in the photo's pixels: the part the model's input shows.

    Squashed to a square (``resize_mode`` "square" without ``resize``) or resized keeping
    each image's own size ("shortest_edge_capped"): the whole photo. Resized then centre-
    cropped: the crop, mapped back through the resize (preprocess.py steps 2' and 3')."""
    if cfg.resize is None or cfg.resize_mode == "shortest_edge_capped":
        return 0, 0, width, height
    side = cfg.resize
    rw, rh = side, side  # the resized image's size, as preprocess computes it
    if cfg.resize_mode == "shortest_edge":
        if width <= height:
            rh = int(side * height / width)
        else:
            rw = int(side * width / height)
    top, left = (rh - cfg.size) // 2, (rw - cfg.size) // 2
    sx, sy = width / rw, height / rh
    box = (left * sx, top * sy, (left + cfg.size) * sx, (top + cfg.size) * sy)
    return (
        max(0, round(box[0])),
        max(0, round(box[1])),
        min(width, max(1, round(box[2]))),
        min(height, max(1, round(box[3]))),
    )


def region_grid(weights: npt.ArrayLike, layout: RegionLayout) -> FloatArray:
    """One row of attention weights (N,) -> (rows, cols) over the regions (prefix dropped)."""
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 1 or w.shape[0] != layout.positions:
        raise ValueError(
            f"weights: expected shape ({layout.positions},) for a {layout.rows}x{layout.cols} "
            f"grid after {layout.prefix} leading positions, got {w.shape}"
        )
    return w[layout.prefix :].reshape(layout.rows, layout.cols)


def display_size(layout: RegionLayout, height: float, width: float) -> tuple[int, int]:
    """(height, width) near the given ones that are odd multiples of the grid's rows and cols
    (every cell centre on a pixel centre, see :func:`heatmap`)."""

    def odd_multiple(n: int, target: float) -> int:
        k = max(0, round((target / n - 1) / 2))  # n * (2k + 1) closest to the target
        return n * (2 * k + 1)

    return odd_multiple(layout.rows, height), odd_multiple(layout.cols, width)


def _interp_matrix(n_out: int, n_in: int) -> npt.NDArray[np.float64]:
    """(n_out, n_in) bilinear weights, pixel centres aligned with cell centres: output pixel
    y samples the grid at (y + 0.5) * n_in / n_out - 0.5, clamped to the outer centres."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def heatmap(
    weights: npt.ArrayLike, layout: RegionLayout, height: int, width: int, normalize: bool = True
) -> FloatArray:
    """One row of attention weights (N,) -> (height, width) float32 heat over the view box.

    Each value is a convex combination of at most four neighbouring cells' weights, so no
    pixel exceeds the largest cell. When height and width are odd multiples of rows and cols
    (:func:`display_size`), the pixel at each cell's centre carries that cell's weight exactly,
    so the maximum is reached in the heaviest cell, and a pixel of another cell reaches it only
    if that cell ties (it weighs its own cell at least 1/2 in each direction).
    normalize: divide by the row's largest region weight (1 at the brightest cell), as the
    "Show, Attend and Tell" pictures do; else the raw weights."""
    grid = region_grid(weights, layout).astype(np.float64)  # (rows, cols)
    if not np.isfinite(grid).all():
        raise ValueError("weights: not finite")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    ry = _interp_matrix(height, layout.rows)  # (H, rows)
    rx = _interp_matrix(width, layout.cols)  # (W, cols)
    heat = ry @ grid @ rx.T  # (H, W)
    if normalize:
        top = grid.max()
        heat = heat / top if top > 0 else np.zeros_like(heat)
    return heat.astype(np.float32)
