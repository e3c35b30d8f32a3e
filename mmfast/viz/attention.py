"""Where a model looked: attention heat-maps over the image.

    cap = mmfast.Captioner.load("bundle/")
    c = cap.caption("photo.jpg", return_attention=True)[0]
    mmfast.viz.save(mmfast.viz.attention_grid("photo.jpg", c), "attention.png")

``attention_grid``: the photo with the caption, then one panel per generated word (and the
end of the caption) with that step's attention as a heat-map over the photo, the word as the
panel's title: the picture "Show, Attend and Tell" is known for. ``answer_figure`` does the
same for VQA answers: the question, the answer and, for models that report it, where the
question made the model look.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from PIL import Image

from .._pipeline import ImageLike
from ..attention_map import RegionLayout, display_size, heatmap, view_box
from ._figure import new_figure, require_matplotlib, rgb_image, show, wrap

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..captioner import Caption
    from ..vqa import Answer

__all__ = ["answer_figure", "attention_grid", "overlay"]

COLORMAP = "turbo"  # the classic attention-map look (jet), perceptually smoother
END = "<end>"


def overlay(
    image: ImageLike,
    weights: npt.ArrayLike,
    layout: RegionLayout,
    side: int = 224,
    alpha: float = 0.5,
) -> npt.NDArray[np.uint8]:
    """The part of `image` the model saw, about `side` pixels on its longer side, with one row
    of attention weights (N,) as a heat-map: (H, W, 3) uint8.

    The heat h in [0, 1] (1 at the heaviest region) is coloured by a colormap (blue: ignored,
    red: the heaviest region) and blended over the photo with weight alpha.
    H and W are odd multiples of the grid (mmfast.attention_map.display_size): the brightest
    heat lands in the heaviest region's cell."""
    require_matplotlib()
    from matplotlib import colormaps

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a number in [0, 1], got {alpha!r}")
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        image = rgb_image(image)
    photo = model_view(image, layout, side).astype(np.float32)  # (h, w, 3)
    h, w = photo.shape[:2]
    heat = heatmap(weights, layout, h, w)  # (h, w) in [0, 1]
    colour = colormaps[COLORMAP](heat)[..., :3] * 255.0  # (h, w, 3)
    out = (1.0 - alpha) * photo + alpha * colour
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def model_view(image: Image.Image, layout: RegionLayout, side: int) -> npt.NDArray[np.uint8]:
    """The part of the photo the model saw (attention_map.view_box), resized to about `side`
    pixels on its longer side, at a size that is an odd multiple of the grid (display_size):
    (H, W, 3) uint8."""
    box = view_box(image.width, image.height, layout.preprocess)
    bw, bh = box[2] - box[0], box[3] - box[1]
    scale = side / max(bw, bh)
    h, w = display_size(layout, bh * scale, bw * scale)
    return np.asarray(image.crop(box).resize((w, h), Image.Resampling.BILINEAR), np.uint8)


def words_of(caption: Caption) -> list[str]:
    """One title per attention row: the generated tokens' text, then <end> for the row of the
    step that said <eos> (absent when the caption ran to its length limit)."""
    assert caption.attention is not None
    words = list(caption.words or [str(t) for t in caption.tokens])
    rows = len(caption.attention)
    if rows == len(words) + 1:
        words.append(END)
    if rows != len(words):
        raise ValueError(
            f"caption: {rows} attention rows for {len(caption.tokens)} tokens (expected the "
            "tokens, plus one for the end of the caption)"
        )
    return [w.strip() or repr(w) for w in words]


def attention_grid(
    image: ImageLike, caption: Caption, *, columns: int = 5, side: int = 224, alpha: float = 0.5
) -> Figure:
    """The photo with its caption, then a panel per generated word with its attention.

    caption: from ``Captioner.caption(..., return_attention=True)`` on this image. Every
    captioner bundle reports attention: mmfast's own LSTM and Transformer captioners (soft
    attention over the encoder's regions) and Hugging Face VisionEncoderDecoder / BLIP
    bundles (the last decoder layer's cross-attention, averaged over heads; the [CLS] and
    distillation positions are left out of the picture)."""
    if caption.attention is None or caption.regions is None:
        raise ValueError("caption: it carries no attention; caption with return_attention=True")
    _check_layout(columns, side)
    photo = rgb_image(image)
    words = words_of(caption)
    fig, axes = new_figure(1 + len(words), columns, (side, side))
    show(axes[0], model_view(photo, caption.regions, side), wrap(caption.text, 34, 3))
    for ax, word, row in zip(axes[1:], words, caption.attention, strict=True):
        show(ax, overlay(photo, row, caption.regions, side, alpha), word)
    return fig


def answer_figure(
    image: ImageLike,
    questions: Sequence[str],
    answers: Sequence[Answer],
    *,
    columns: int = 3,
    side: int = 224,
    alpha: float = 0.5,
) -> Figure:
    """The photo once per question, titled with the question and the answer (and its
    score); where the answer carries attention (mmfast's own VQA models), the mean over its
    glimpses as a heat-map: each glimpse's row sums to 1, so the mean shows every place any
    glimpse looked."""
    if isinstance(questions, str) or len(questions) != len(answers) or not questions:
        raise ValueError(
            f"questions: expected one question per answer ({len(answers)} answers), "
            f"got {questions!r}"
        )
    _check_layout(columns, side)
    photo = rgb_image(image)
    fig, axes = new_figure(len(questions), columns, (side, side))
    for ax, q, a in zip(axes, questions, answers, strict=True):
        title = f"{wrap('Q: ' + q, 34, 1)}\nA: {a.text} ({a.confidence:.2f})"
        if a.attention is not None and a.regions is not None:
            rows = np.atleast_2d(np.asarray(a.attention, np.float64))  # (glimpses, N)
            show(ax, overlay(photo, rows.mean(axis=0), a.regions, side, alpha), title)
        else:
            show(ax, _fit(photo, side), title)
    return fig


def _fit(photo: Image.Image, side: int) -> Image.Image:
    scale = side / max(photo.width, photo.height)
    size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
    return photo.resize(size, Image.Resampling.BILINEAR)


def _check_layout(columns: int, side: int) -> None:
    for name, v, hi in (("columns", columns, 64), ("side", side, 4096)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{name}: expected an integer in 1..{hi}, got {v!r}")
