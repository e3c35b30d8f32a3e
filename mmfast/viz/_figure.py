"""What every mmfast picture shares: matplotlib (imported only here, and only when a picture is
asked for), a figure of panels, images loaded as the pipelines load them, and saving.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, never through pyplot:
no global state, no GUI backend, safe in threads and on a headless server.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from .._pipeline import ImageLike, load_image
from ..preprocess import _as_rgb_image

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["INSTALL_HINT", "new_figure", "require_matplotlib", "rgb_image", "save", "show", "wrap"]

INSTALL_HINT = "pip install 'mmfast[viz]' (matplotlib)"


def require_matplotlib() -> None:
    """ImportError naming the extra to install when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(f"mmfast.viz draws with matplotlib: {INSTALL_HINT}") from e


def rgb_image(image: ImageLike, name: str = "image") -> Image.Image:
    """A path, PIL image or (H, W, 3) uint8 array -> an RGB PIL image (errors name `name`)."""
    try:
        return _as_rgb_image(load_image(image, 0))
    except (TypeError, ValueError, OSError) as e:
        msg = str(e).replace("images[0]", name)
        if msg == str(e) and not msg.startswith(name):
            msg = f"{name}: {msg}"
        raise type(e)(msg) from e


def new_figure(
    panels: int, columns: int, panel_px: tuple[float, float], header_px: float = 0.0
) -> tuple[Figure, list[Axes]]:
    """A figure of `panels` axes, `columns` a row, each panel_px (width, height) pixels at
    100 dpi plus room for a two-line title; header_px on top for a suptitle. Axes off."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = max(1, min(columns, panels))
    rows = math.ceil(panels / cols)
    title_px = 40.0  # two lines of 9-point text
    w_in = cols * (panel_px[0] + 12) / 100
    h_in = (rows * (panel_px[1] + title_px + 12) + header_px) / 100
    # constrained layout keeps every title inside the figure, whatever its length
    fig = Figure(figsize=(w_in, h_in), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = []
    for i in range(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        axes.append(ax)
    return fig, axes


def wrap(text: str, width: int = 28, lines: int = 2) -> str:
    """A title that fits a panel: wrapped, at most `lines` lines (the last one cut with ...)."""
    parts = textwrap.wrap(text, width) or [""]
    if len(parts) > lines:
        parts = parts[:lines]
        parts[-1] = parts[-1][: width - 3] + "..."
    return "\n".join(parts)


def show(ax: Axes, pixels: npt.NDArray[np.uint8] | Image.Image, title: str, **kw: Any) -> None:
    """Draw an RGB image in a panel, pixel for pixel (nearest: no smoothing of the heat)."""
    ax.imshow(np.asarray(pixels), interpolation="nearest", **kw)
    ax.set_title(title, fontsize=9)


def save(fig: Figure, path: str | Path) -> Path:
    """Write a figure (PNG, or any format matplotlib knows by the suffix); returns the path."""
    out = Path(path)
    if out.suffix == "":
        raise ValueError(f"path: {out} has no suffix (.png, .jpg, .pdf, .svg)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"path: the folder {out.parent} does not exist")
    fig.savefig(out, dpi=100)
    return out
