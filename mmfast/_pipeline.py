"""What the task pipelines share: loading a bundle's sessions, images and texts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import numpy as np
from PIL import Image

from .bundle import Bundle, BundleFormatError, Manifest, load_bundle
from .preprocess import load_rgb, preprocess_batch
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


def pad_tokens(ids: list[list[int]], max_len: int, pad: int) -> np.ndarray:
    """Token id lists -> (B, T) int64, right-padded with `pad` (<pad>'s id), cut at max_len."""
    t = max(1, min(max_len, max(len(x) for x in ids)))
    out = np.full((len(ids), t), pad, np.int64)
    for i, x in enumerate(ids):
        x = x[:t]
        out[i, : len(x)] = x
    return out


P = TypeVar("P", bound="Pipeline")


class Pipeline:
    """A bundle of one task with its sessions, preprocessing and tokenizer.

    A subclass names its task and the graphs it runs (:meth:`graph_files`); it reads its task's
    manifest sections, which loading has checked are there (mmfast.bundle.TASK_SECTIONS).
    """

    task: ClassVar[str] = ""

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        if bundle.task != self.task:
            raise BundleFormatError(
                f"{bundle.path}: a {bundle.task!r} bundle, not a {self.task!r} one"
            )
        self.bundle = bundle
        m = bundle.manifest
        opt = bundle.path / ".ort-cache"
        self.sessions = {
            g: Session(bundle.file(g), device=device, threads=threads, optimized_dir=opt)
            for g in self.graph_files(m)
        }
        self.preprocess_config = m.preprocess
        vocab = bundle.file(m.vocab)
        try:
            self.tokenizer = Tokenizer.load(vocab, m.special_tokens)
        except ValueError as e:  # the vocabulary disagrees with the manifest's special_tokens
            raise BundleFormatError(f"{vocab}: {e}") from e

    @classmethod
    def load(
        cls: type[P], bundle: str | Path, device: str = "cpu", threads: int | None = None
    ) -> P:
        """Load and verify a bundle directory (see mmfast.bundle for the checks).

        device: "cpu" or "cuda" (ONNX Runtime's CUDA provider; falls back to the CPU, said
        aloud). threads: intra-op threads per session (None: ONNX Runtime's default).
        """
        return cls(load_bundle(bundle), device=device, threads=threads)

    @classmethod
    def graph_files(cls, manifest: Manifest) -> list[str]:
        """The bundle's graphs this pipeline runs, one session each."""
        raise NotImplementedError

    def tokens(self, texts: Sequence[str], max_len: int) -> np.ndarray:
        """(B, T) int64 model input: each text's ids (<bos> ... <eos>), padded with <pad>."""
        ids = [self.tokenizer.encode(t) for t in texts]
        return pad_tokens(ids, max_len, self.tokenizer.pad_id)

    def pixels(self, images: Sequence[ImageLike]) -> np.ndarray:
        """(B, 3, S, S) float32 model input."""
        return preprocess_batch(cast(list[Any], load_images(images)), self.preprocess_config)

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.sessions[graph]
        return dict(zip(s.output_names, s.run(feeds), strict=True))
