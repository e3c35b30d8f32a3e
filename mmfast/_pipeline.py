"""What the task pipelines share: loading a bundle's sessions, images and texts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from .bundle import Bundle, BundleFormatError
from .preprocess import PreprocessConfig, load_rgb, preprocess_batch
from .session import Session
from .tokenizer import Tokenizer

__all__ = ["ImageLike", "Pipeline", "load_images", "pad_tokens"]

ImageLike = str | Path | Image.Image | np.ndarray


def load_images(images: Sequence[ImageLike]) -> list[Image.Image | np.ndarray]:
    """Paths, PIL images or (H, W, 3) uint8 arrays -> images the preprocessing takes."""
    out: list[Image.Image | np.ndarray] = []
    for i, im in enumerate(images):
        if isinstance(im, (str, Path)):
            try:
                out.append(load_rgb(im))
            except FileNotFoundError:
                raise FileNotFoundError(f"images[{i}]: no such file: {im}") from None
            except (OSError, ValueError) as e:
                raise ValueError(f"images[{i}]: cannot read {im} as an image ({e})") from e
        elif isinstance(im, (Image.Image, np.ndarray)):
            out.append(im)
        else:
            raise TypeError(
                f"images[{i}]: expected a path, a PIL image or an array, got {type(im).__name__}"
            )
    return out


def pad_tokens(ids: list[list[int]], max_len: int) -> np.ndarray:
    """Token id lists -> (B, T) int64, right-padded with 0 (<pad>), cut at max_len."""
    t = max(1, min(max_len, max(len(x) for x in ids)))
    out = np.zeros((len(ids), t), np.int64)
    for i, x in enumerate(ids):
        x = x[:t]
        out[i, : len(x)] = x
    return out


class Pipeline:
    """A bundle of one task with its sessions, preprocessing and tokenizer."""

    task = ""

    def __init__(
        self, bundle: Bundle, graphs: Sequence[str], device: str, threads: int | None
    ) -> None:
        if bundle.task != self.task:
            raise BundleFormatError(
                f"{bundle.path}: a {bundle.task!r} bundle, not a {self.task!r} one"
            )
        self.bundle = bundle
        opt = bundle.path / ".ort-cache"
        self.sessions = {
            g: Session(bundle.file(g), device=device, threads=threads, optimized_dir=opt)
            for g in graphs
        }
        self.preprocess_config = PreprocessConfig.from_dict(bundle.manifest["preprocess"])
        self.tokenizer = Tokenizer.load(bundle.file(bundle.manifest["vocab"]))

    def pixels(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(B, 3, S, S) float32 model input."""
        return preprocess_batch(cast(list[Any], load_images(images)), self.preprocess_config)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.sessions[graph]
        return dict(zip(s.output_names, s.run(feeds), strict=True))
