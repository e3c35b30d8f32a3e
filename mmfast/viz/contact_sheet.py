"""Search results at a glance: the query and the top-k images as a contact sheet.

ids, scores = retriever.search("a dog on a beach", k=8)
fig = mmfast.viz.contact_sheet("a dog on a beach", [root / i for i in ids], scores, ids)
mmfast.viz.save(fig, "results.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .._pipeline import ImageLike
from ._figure import new_figure, rgb_image, show, wrap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MISSING_GREY", "contact_sheet"]

MISSING_GREY = 200  # the tile of an image that cannot be read (moved since it was indexed)


def contact_sheet(
    query: str,
    images: Sequence[ImageLike],
    scores: Sequence[float],
    labels: Sequence[str] | None = None,
    *,
    columns: int = 5,
    tile: int = 160,
) -> Figure:
    """The query as the title, then one tile per result, best score first (ties keep their
    order), each titled with its rank, score and label (e.g. the indexed file name).

    images: paths, PIL images or (H, W, 3) uint8 arrays, one per score. A path that cannot
    be read gets a grey tile saying so: results outlive the files they point to."""
    if not isinstance(query, str):
        raise TypeError(f"query: expected a string, got {type(query).__name__}")
    if isinstance(images, (str, Image.Image, np.ndarray)):
        raise TypeError("images: expected a sequence of images, one per result")
    if len(images) != len(scores) or len(images) == 0:
        raise ValueError(f"scores: expected one score per image ({len(images)}), got {len(scores)}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels: expected one label per image ({len(images)}), got {len(labels)}")
    values = [float(s) for s in scores]
    if not all(np.isfinite(values)):
        raise ValueError("scores: not finite")
    for name, v, hi in (("columns", columns, 64), ("tile", tile, 2048)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{name}: expected an integer in 1..{hi}, got {v!r}")
    order = sorted(range(len(values)), key=lambda i: -values[i])  # stable: ties keep order
    fig, axes = new_figure(len(order), columns, (tile, tile), header_px=40)
    fig.suptitle(wrap(query, 90, 1), fontsize=12)
    for rank, (ax, i) in enumerate(zip(axes, order, strict=True), 1):
        label = labels[i] if labels is not None else f"result {i + 1}"
        pixels, note = _tile(images[i], tile)
        show(ax, pixels, f"{rank}. {values[i]:.3f}\n{wrap(note or label, 24, 1)}")
    return fig


def _tile(image: ImageLike, side: int) -> tuple[Image.Image, str | None]:
    """The image fitted into side x side (aspect kept), or a grey square when it can't be
    read (with why)."""
    try:
        photo = rgb_image(image)
    except (OSError, ValueError) as e:
        grey = Image.new("RGB", (side, side), (MISSING_GREY,) * 3)
        return grey, f"unreadable: {type(e).__name__}"
    scale = side / max(photo.width, photo.height)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    return photo.resize(size, Image.Resampling.BILINEAR), None
