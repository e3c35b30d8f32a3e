"""The benchmark scripts' pictures (matplotlib, the `viz` extra; written as PNG next to their
tables and shown in benchmarks/README.md):

- latency_distribution: per pipeline, every timed call of PyTorch eager and of mmfast as a
  box (whiskers p1..p99) with p50 / p90 / p99 marked and labelled;
- speedup_bars: per kernel shape, mmfast's speed-up over each peer (peer time / mmfast time,
  1.0 drawn: a bar past it means mmfast was faster).

Built on matplotlib.figure.Figure with the Agg canvas (no pyplot, no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

PLOTS = Path(__file__).parent / "plots"
PERCENTILES = (50, 90, 99)


def can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("# no plot: matplotlib is missing (pip install 'mmfast[viz]')")
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"# plot: {path}")
    return path


def latency_distribution(
    samples: Mapping[str, Mapping[str, Sequence[float]]], path: Path, title: str
) -> Path:
    """samples: pipeline -> {implementation -> per-call latencies in ms}. One panel per
    pipeline, a box per implementation (box: p25..p75, whiskers: p1..p99, line: p50), p90 and
    p99 marked, the three percentiles written in the row's label."""
    pipelines = list(samples)
    impls = list(dict.fromkeys(i for p in pipelines for i in samples[p]))
    colours = ["#c44e52", "#4c72b0", "#55a868", "#8172b2"]
    rows = sum(len(samples[p]) for p in pipelines)
    fig = _figure(8.0, 0.9 + 0.55 * rows + 0.45 * len(pipelines))
    axes = fig.subplots(len(pipelines), 1, squeeze=False)[:, 0]
    for ax, pipe in zip(axes, pipelines, strict=True):
        names = [i for i in impls if i in samples[pipe]]
        data = [np.asarray(samples[pipe][i], np.float64) for i in names]
        box = ax.boxplot(
            data,
            orientation="horizontal",
            whis=(1, 99),
            showfliers=False,
            patch_artist=True,
            widths=0.55,
            medianprops={"color": "black"},
        )
        labels = []
        for y, (name, d, patch) in enumerate(zip(names, data, box["boxes"], strict=True), 1):
            patch.set_facecolor(colours[impls.index(name) % len(colours)])
            patch.set_alpha(0.45)
            p50, p90, p99 = np.percentile(d, PERCENTILES)
            ax.plot([p90], [y], "v", color="black", markersize=6)
            ax.plot([p99], [y], "x", color="black", markersize=7)
            labels.append(f"{name}\np50 {p50:.2f}  p90 {p90:.2f}  p99 {p99:.2f}")
        ax.set_yticks(range(1, len(names) + 1), labels, fontsize=8)
        top = max(float(np.percentile(d, 99)) for d in data)
        ax.set_xlim(0, top * 1.08)
        ax.set_title(pipe, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("ms per call (line: p50, v: p90, x: p99; whiskers p1..p99)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def speedup_bars(
    shapes: Sequence[str], ratios: Mapping[str, Sequence[float]], path: Path, title: str
) -> Path:
    """ratios: peer -> per shape, peer time / mmfast time (> 1: mmfast faster)."""
    peers = list(ratios)
    y = np.arange(len(shapes))
    h = 0.8 / max(1, len(peers))
    fig = _figure(7.5, 1.0 + 0.32 * len(shapes) * max(1, len(peers)) / 1.5)
    ax = fig.add_subplot()
    for j, peer in enumerate(peers):
        r = np.asarray(ratios[peer], np.float64)
        bars = ax.barh(y + (j - (len(peers) - 1) / 2) * h, r, h, label=f"vs {peer}")
        for rect, v in zip(bars, r, strict=True):
            ax.annotate(
                f"{v:.2f}x",
                (v, rect.get_y() + rect.get_height() / 2),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    ax.axvline(1.0, color="k", lw=1)
    top = max((max(v) for v in ratios.values() if len(v)), default=1.0)
    ax.set_xlim(0, max(1.2, top * 1.15))
    ax.xaxis.set_major_formatter("{x:.1f}x")
    ax.grid(axis="x", alpha=0.3)
    ax.set_yticks(y, shapes, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of mmfast (peer time / mmfast time; > 1: mmfast faster)", fontsize=8)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
