"""Pictures: attention rows -> heat-maps on the image (mmfast.attention_map, numpy) and the
figures drawn from them (mmfast.viz, matplotlib's Agg canvas: headless).

The figures are checked by their pixels, read back from the rendered canvas: each word's
panel is decoded back into heat values (the overlay's colours over a flat grey photo are a
known function of the heat) and its brightest cell must be the attention row's argmax; a
contact sheet's tiles must be the k images, best score first."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmfast.attention_map import (
    RegionLayout,
    display_size,
    heatmap,
    region_grid,
    region_layout,
    view_box,
)
from mmfast.captioner import Caption
from mmfast.preprocess import PreprocessConfig, preprocess
from mmfast.vqa import Answer

SQUARE = PreprocessConfig(size=32)


# ---------------------------------------------------------------- layout and heat (numpy)


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_region_layout_finds_the_grid_and_the_prefix(prefix: int) -> None:
    for g in range(1, 40):
        lay = region_layout(g * g + prefix, SQUARE)
        assert (lay.rows, lay.cols, lay.prefix) == (g, g, prefix)
        assert lay.positions == g * g + prefix


@pytest.mark.parametrize("n", [7, 8, 12, 13, 0, -1])
def test_region_layout_refuses_what_is_no_square_grid(n: int) -> None:
    # 7, 6, 5 / 8, 7, 6 / 12, 11, 10 / 13, 12, 11: none is a square
    with pytest.raises(ValueError, match="n_positions"):
        region_layout(n, SQUARE)


def _bilinear_reference(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Plain-loop float64 bilinear resampling, pixel centres on cell centres (clamped)."""
    rows, cols = grid.shape
    out = np.empty((h, w))
    for y in range(h):
        sy = min(max((y + 0.5) * rows / h - 0.5, 0.0), rows - 1.0)
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, rows - 1), sy - np.floor(sy)
        for x in range(w):
            sx = min(max((x + 0.5) * cols / w - 0.5, 0.0), cols - 1.0)
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, cols - 1), sx - np.floor(sx)
            top = (1 - fx) * grid[y0, x0] + fx * grid[y0, x1]
            bottom = (1 - fx) * grid[y1, x0] + fx * grid[y1, x1]
            out[y, x] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize("rows,cols,h,w", [(3, 3, 9, 9), (4, 5, 13, 7), (7, 7, 50, 31)])
def test_heatmap_is_bilinear_on_cell_centres(rows: int, cols: int, h: int, w: int) -> None:
    rng = np.random.default_rng(rows * 100 + h)
    lay = RegionLayout(rows, cols, 1, SQUARE)
    weights = rng.dirichlet(np.ones(lay.positions))
    grid = weights[1:].reshape(rows, cols)
    want = _bilinear_reference(grid, h, w)
    # float32 output of a float64 computation: within a few float32 ulps of the reference
    np.testing.assert_allclose(heatmap(weights, lay, h, w, normalize=False), want, rtol=1e-6)
    np.testing.assert_allclose(heatmap(weights, lay, h, w), want / grid.max(), rtol=1e-6)


def _argmax_cell(heat: np.ndarray, rows: int, cols: int) -> tuple[int, int]:
    """The cell (r, c) holding the heat's brightest pixel (the first one if several)."""
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(y * rows // heat.shape[0]), int(x * cols // heat.shape[1])


def test_brightest_pixel_is_in_the_heaviest_cell_even_next_to_a_plateau() -> None:
    # The hard case: one cell of weight 1.0 alone, a 2 x 2 block of 0.99 elsewhere. Between
    # the block's four centres bilinear heat stays 0.99, while next to the lone cell it falls
    # off at once: unless a pixel sits on the lone cell's centre, the brightest pixel is in
    # the block. display_size puts one there.
    g = 8
    grid = np.full((g, g), 0.01)
    grid[1, 6] = 1.0
    grid[4:6, 1:3] = 0.99
    lay = RegionLayout(g, g, 0, SQUARE)
    at_even_size = heatmap(grid.ravel(), lay, 4 * g, 4 * g)
    assert _argmax_cell(at_even_size, g, g) != (1, 6)  # the test can fail
    for target in (20, 64, 100, 224, 300):
        h, w = display_size(lay, target, target * 0.7)
        assert h % (2 * g) == g and w % (2 * g) == g  # odd multiples of the grid
        heat = heatmap(grid.ravel(), lay, h, w)
        assert _argmax_cell(heat, g, g) == (1, 6)
        assert heat.max() == pytest.approx(1.0, abs=1e-7)


def test_brightest_pixel_is_in_the_argmax_cell_for_random_rows() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        g, prefix = int(rng.integers(1, 15)), int(rng.integers(0, 3))
        lay = region_layout(g * g + prefix, SQUARE)
        row = rng.dirichlet(np.full(lay.positions, float(rng.choice([0.1, 1.0, 10.0]))))
        h, w = display_size(lay, float(rng.integers(1, 300)), float(rng.integers(1, 300)))
        cell = np.unravel_index(int(np.argmax(row[prefix:])), (g, g))
        assert _argmax_cell(heatmap(row, lay, h, w), g, g) == cell


def test_heatmap_bad_input() -> None:
    lay = RegionLayout(2, 2, 1, SQUARE)
    with pytest.raises(ValueError, match=r"weights: expected shape \(5,\)"):
        region_grid(np.ones(4), lay)
    with pytest.raises(ValueError, match="weights: not finite"):
        heatmap([0, 1, np.nan, 0, 0], lay, 4, 4)
    with pytest.raises(ValueError, match="height"):
        heatmap(np.ones(5), lay, 0, 4)


@pytest.mark.parametrize(
    "cfg",
    [
        PreprocessConfig(size=32),
        PreprocessConfig(size=24, resize=40, resample="pil_bilinear", rescale=1.0),
        PreprocessConfig(
            size=24, resize=24, resample="pil_bilinear", rescale=1.0, resize_mode="shortest_edge"
        ),
    ],
)
@pytest.mark.parametrize("wh", [(64, 64), (120, 60), (50, 130)])
def test_view_box_is_what_the_model_input_shows(cfg: PreprocessConfig, wh: tuple[int, int]):
    # a photo whose red channel is x and green channel y (scaled into 0..255): the model
    # input's corners then tell which part of the photo it shows
    w, h = wh
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    photo = np.stack([xs * 255 // (w - 1), ys * 255 // (h - 1), np.zeros_like(xs)], axis=-1).astype(
        np.uint8
    )
    x = preprocess(photo, PreprocessConfig(**{**cfg.__dict__, "mean": (0, 0, 0), "std": (1, 1, 1)}))
    scale = 1.0 if cfg.rescale == 1.0 else 255.0  # back to 0..255
    left, top, right, bottom = view_box(w, h, cfg)
    # the input's first / last column sample the box's first / last pixel columns, to within
    # half an input pixel of the box (the resize's footprint) and one level of rounding
    tol_x = 0.5 * (right - left) / x.shape[2] + 1
    tol_y = 0.5 * (bottom - top) / x.shape[1] + 1
    x_at = x[0] * (w - 1) / 255.0 * scale  # photo column sampled by each input pixel
    y_at = x[1] * (h - 1) / 255.0 * scale
    assert x_at[:, 0].mean() == pytest.approx(left + 0.5 * (right - left) / x.shape[2], abs=tol_x)
    assert x_at[:, -1].mean() == pytest.approx(right - 0.5 * (right - left) / x.shape[2], abs=tol_x)
    assert y_at[0].mean() == pytest.approx(top + 0.5 * (bottom - top) / x.shape[1], abs=tol_y)
    assert y_at[-1].mean() == pytest.approx(bottom - 0.5 * (bottom - top) / x.shape[1], abs=tol_y)


# ---------------------------------------------------------------- figures (matplotlib, Agg)

mpl = pytest.importorskip("matplotlib")  # the `viz` extra (in `dev`): CI has it

from mmfast import viz  # noqa: E402
from mmfast.viz.attention import COLORMAP, END  # noqa: E402
from mmfast.viz.contact_sheet import MISSING_GREY  # noqa: E402

GREY = 128


def _canvas(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float64)  # (H, W, 3)


def _panel_pixels(fig, ax) -> np.ndarray:
    """The pixels of the image drawn in `ax`, read back from the rendered canvas."""
    px = _canvas(fig)
    box = ax.images[0].get_window_extent()
    top = px.shape[0] - box.y1  # display coordinates count from the bottom
    y0, y1 = int(np.ceil(top)), int(np.floor(top + box.height))
    x0, x1 = int(np.ceil(box.x0)), int(np.floor(box.x1))
    return px[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]  # inside the edge pixels


def _decode_heat(pixels: np.ndarray, alpha: float) -> np.ndarray:
    """Overlay colours over the flat grey photo -> the heat that made each (nearest colour
    of 1024 levels)."""
    levels = np.linspace(0, 1, 1024)
    colours = mpl.colormaps[COLORMAP](levels)[:, :3] * 255.0
    table = (1 - alpha) * GREY + alpha * colours  # (1024, 3)
    d = ((pixels[:, :, None, :] - table[None, None]) ** 2).sum(-1)  # (h, w, 1024)
    return levels[np.argmin(d, axis=-1)]


def _caption(rows: np.ndarray, words: list[str], lay: RegionLayout) -> Caption:
    return Caption(
        text=" ".join(words),
        tokens=list(range(len(words))),
        score=-1.0,
        attention=rows,
        words=words,
        regions=lay,
    )


@pytest.mark.parametrize("g,prefix", [(7, 0), (4, 1), (6, 2)])
def test_attention_grid_panels_show_each_rows_argmax(g: int, prefix: int) -> None:
    rng = np.random.default_rng(g)
    lay = region_layout(g * g + prefix, SQUARE)
    words = ["a", "red", "circle"]
    rows = rng.dirichlet(np.full(lay.positions, 0.5), size=len(words) + 1)  # + <end>
    photo = np.full((90, 120, 3), GREY, np.uint8)
    fig = viz.attention_grid(photo, _caption(rows, words, lay), columns=3, side=96)
    assert len(fig.axes) == 1 + len(words) + 1
    assert [ax.get_title() for ax in fig.axes[1:]] == [*words, END]
    assert fig.axes[0].get_title() == "a red circle"
    for ax, row in zip(fig.axes[1:], rows, strict=True):
        heat = _decode_heat(_panel_pixels(fig, ax), 0.5)
        want = np.unravel_index(int(np.argmax(row[prefix:])), (g, g))
        # the heaviest cell at full heat, to the colormap's resolution (a 256-entry table)
        assert heat.max() >= 1.0 - 1.0 / 255
        assert _argmax_cell(heat, g, g) == want
    # the first panel is the photo itself, untinted
    assert np.abs(_panel_pixels(fig, fig.axes[0]) - GREY).max() <= 1


def test_attention_grid_needs_attention() -> None:
    c = Caption(text="a", tokens=[1], score=0.0)
    with pytest.raises(ValueError, match="caption: it carries no attention"):
        viz.attention_grid(np.zeros((8, 8, 3), np.uint8), c)
    lay = region_layout(4, SQUARE)
    bad = _caption(np.full((5, 4), 0.25), ["a", "b"], lay)  # 5 rows for 2 tokens
    with pytest.raises(ValueError, match="caption: 5 attention rows for 2 tokens"):
        viz.attention_grid(np.zeros((8, 8, 3), np.uint8), bad)
    with pytest.raises(FileNotFoundError, match="image: no such file"):
        viz.attention_grid("/nonexistent.png", _caption(np.full((2, 4), 0.25), ["a"], lay))


def test_contact_sheet_holds_k_tiles_in_score_order() -> None:
    k = 7
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (k, 3))
    images = [np.full((40 + 10 * i, 60, 3), c, np.uint8) for i, c in enumerate(colours)]
    scores = rng.permutation(np.linspace(0.1, 0.9, k))
    labels = [f"img{i}.png" for i in range(k)]
    fig = viz.contact_sheet("a red circle", images, list(scores), labels, columns=4, tile=64)
    assert len(fig.axes) == k
    order = np.argsort(-scores)
    for rank, (ax, i) in enumerate(zip(fig.axes, order, strict=True), 1):
        title = ax.get_title()
        assert title.startswith(f"{rank}. {scores[i]:.3f}") and labels[i] in title
        tile = _panel_pixels(fig, ax)
        np.testing.assert_allclose(np.median(tile.reshape(-1, 3), axis=0), colours[i], atol=1)
    assert fig._suptitle is not None and fig._suptitle.get_text() == "a red circle"


def test_contact_sheet_marks_unreadable_images_and_checks_arguments(tmp_path) -> None:
    ok = np.zeros((10, 10, 3), np.uint8)
    fig = viz.contact_sheet("q", [ok, tmp_path / "gone.png"], [0.2, 0.9], ["ok", "gone"])
    first = fig.axes[0]  # the better score comes first, even unreadable
    assert "unreadable" in first.get_title()
    assert np.abs(_panel_pixels(fig, first) - MISSING_GREY).max() <= 1
    with pytest.raises(ValueError, match="scores: expected one score per image"):
        viz.contact_sheet("q", [ok, ok], [0.5])
    with pytest.raises(ValueError, match="labels"):
        viz.contact_sheet("q", [ok], [0.5], ["a", "b"])
    with pytest.raises(TypeError, match="images"):
        viz.contact_sheet("q", ok, [0.5])  # type: ignore[arg-type]


def test_answer_figure_with_and_without_attention() -> None:
    lay = region_layout(9, SQUARE)
    att = np.zeros((2, 9))
    att[0, 2] = att[1, 2] = 1.0  # both glimpses on the top-right cell
    photo = np.full((60, 60, 3), GREY, np.uint8)
    answers = [Answer("red", 0.9, att, regions=lay), Answer("two", 0.7)]
    fig = viz.answer_figure(photo, ["what colour?", "how many?"], answers)
    assert "A: red (0.90)" in fig.axes[0].get_title()
    assert "Q: how many?" in fig.axes[1].get_title()
    assert _argmax_cell(_decode_heat(_panel_pixels(fig, fig.axes[0]), 0.5), 3, 3) == (0, 2)
    assert np.abs(_panel_pixels(fig, fig.axes[1]) - GREY).max() <= 1  # no attention: no tint
    with pytest.raises(ValueError, match="questions: expected one question per answer"):
        viz.answer_figure(photo, ["one"], answers)


def test_save_writes_a_png_headless(tmp_path) -> None:
    lay = region_layout(4, SQUARE)
    fig = viz.attention_grid(
        np.full((20, 20, 3), 50, np.uint8), _caption(np.full((2, 4), 0.25), ["a"], lay), side=32
    )
    out = viz.save(fig, tmp_path / "a.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (round(fig.get_figwidth() * 100),) * 1 + (
            round(fig.get_figheight() * 100),
        )
    with pytest.raises(ValueError, match="no suffix"):
        viz.save(fig, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        viz.save(fig, tmp_path / "no" / "a.png")
