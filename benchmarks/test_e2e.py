"""End-to-end groups for pytest-benchmark: the own captioner pipeline, mmfast vs PyTorch eager.

    pytest benchmarks/test_e2e.py --benchmark-only [--threads 1]

The model is bench_serve.build_bundle's: the demo's LSTM captioner size (64 px, conv widths
32-64-128), untrained, <eos> pushed down so every caption is the full 20 tokens (a trained
model's full-length cost, independent of what it happens to say); built once per session
(~seconds) under pytest's temporary directory, no training. Images: shapes-dataset scenes
(mmfast_export.shapes, the data bench_e2e.py reads), rendered in memory.

Groups "e2e caption <greedy|beam 4> b<1|32>", each with bench_e2e.py's two calls from decoded
images to tokens, preprocessing included: `mmfast` (bench_e2e.mm_caption: Captioner on ONNX
Runtime, numpy decoding) and `torch-eager` (bench_e2e.torch_caption: the PyTorch model,
mmfast_export.decoding). Batch 1 cycles through the images, one per call, as bench_e2e does.
Checked before and after timing: both give the tokens of a float64 copy of the PyTorch model
(batch 1: 8 images, each alone, then the last timed call; batch 32: the timed batch).
"""

from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import Any

import bench_e2e
import bench_serve
import numpy as np
import pytest
import torch

from mmfast.captioner import Captioner
from mmfast.preprocess import PreprocessConfig, preprocess_batch
from mmfast_export import decoding
from mmfast_export.runs import load_run

MAX_TOKENS = 20  # bench_e2e's caption length
N_IMAGES = 32
CASES = [(beam, batch) for batch in (1, 32) for beam in (1, 4)]
DECODE = {1: "greedy", 4: "beam 4"}
IMPLS = ("mmfast", "torch-eager")


def shapes_images(n: int) -> list[np.ndarray]:
    """n shapes-dataset scenes (64 px, uint8 (H, W, 3)), as bench_e2e reads from disk."""
    from mmfast_export.shapes import ShapesConfig, render, sample_scene

    cfg = ShapesConfig(num_images=max(n, 3), size=64, seed=7)
    return [np.asarray(render(sample_scene(cfg, i), cfg).convert("RGB")) for i in range(n)]


class Models:
    def __init__(self, root: Path, threads: int) -> None:
        bundle = bench_serve.build_bundle(root)  # writes root/run and root/bundle
        self.model, cfg, _ = load_run(root / "run")  # (eval mode, float32)
        self.prep = PreprocessConfig.from_dict(cfg["preprocess"])
        self.cap = Captioner.load(bundle, threads=threads)
        self.model64 = copy.deepcopy(self.model).double()
        self.images = shapes_images(N_IMAGES)

    def reference(self, images: list[np.ndarray], beam: int) -> list[list[int]]:
        """Tokens of the float64 model (same decoding functions as torch_caption)."""
        px = torch.from_numpy(preprocess_batch(images, self.prep)).double()
        with torch.no_grad():
            state = self.model64.encode(px)
            if beam == 1:
                return decoding.greedy(self.model64, state, MAX_TOKENS).tokens
            return decoding.beam_search(self.model64, state, MAX_TOKENS, beam=beam).tokens


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory, threads: int) -> Models:
    return Models(tmp_path_factory.mktemp("caption"), threads)


def call(impl: str, m: Models, images: list[np.ndarray], beam: int) -> list[list[int]]:
    if impl == "mmfast":
        return bench_e2e.mm_caption(m.cap, images, beam)[0]
    return bench_e2e.torch_caption(m.model, m.prep, images, beam)


@pytest.mark.parametrize(
    ("beam", "batch", "impl"),
    [
        pytest.param(beam, batch, impl, id=f"{DECODE[beam].replace(' ', '')}-b{batch}-{impl}")
        for beam, batch in CASES
        for impl in IMPLS
    ],
)
def test_caption(benchmark: Any, models: Models, threads: int, beam: int, batch: int, impl: str):
    decode = DECODE[beam]
    benchmark.group = f"e2e caption {decode} b{batch} threads={threads}"
    first = models.images[:8] if batch == 1 else models.images[:batch]
    want = models.reference(first, beam)
    if batch == 1:  # each image alone, as timed
        got = [call(impl, models, [im], beam)[0] for im in first]
    else:
        got = call(impl, models, first, beam)
    assert got == want, f"{impl} {decode}: tokens differ from the float64 model's"

    if batch == 1:  # one image per call, cycling through the set
        order = itertools.cycle(range(len(models.images)))
        seen: list[int] = []

        def run() -> list[list[int]]:
            i = next(order)
            seen.append(i)
            return call(impl, models, [models.images[i]], beam)
    else:

        def run() -> list[list[int]]:
            return call(impl, models, first, beam)

    time.sleep(0.1)  # the previous benchmark's pool threads go idle first
    last = benchmark(run)
    if batch == 1:
        assert last == models.reference([models.images[seen[-1]]], beam), "after timing"
    else:
        assert last == want, f"{impl} {decode}: tokens changed during timing"
    benchmark.extra_info.update(impl=impl, threads=threads, beam=beam, batch=batch)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is not None:
        benchmark.extra_info["images_per_s"] = round(batch / stats.stats.median, 2)
