"""Evaluate a retriever on a caption split: embed its images and captions, then the standard
metrics (mmfast.retrieval_metrics: R@1/5/10 both ways, rSUM, median and mean rank).

    r = mmfast.Retriever.load("bundle/")
    split = read_karpathy("dataset_coco.json", "coco/", "test", captions_per_image=5)
    evaluate_retrieval(r, split)   # {"t2i_r1": ..., "rsum": ..., "n_images": 5000, ...}

Embeddings are normalised here (cosine similarity), whatever the bundle returns.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from ._checks import positive_int
from .karpathy import KarpathySplit
from .retrieval_metrics import retrieval_metrics_from_embeddings

__all__ = ["Embedder", "evaluate_retrieval"]


class Embedder(Protocol):
    """What evaluation needs of a retriever (mmfast.Retriever has both)."""

    def embed_images(self, images: Sequence[str | Path]) -> dict[str, np.ndarray]: ...

    def embed_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]: ...


def _embed_all(
    what: str, items: Sequence[str], embed: Embedder, batch_size: int, progress: bool
) -> np.ndarray:
    """(len(items), D) float32 embeddings, batch by batch."""
    parts: list[np.ndarray] = []
    try:
        for a in range(0, len(items), batch_size):
            batch = items[a : a + batch_size]
            if what == "images":
                e = embed.embed_images(batch)["image_embedding"]
            else:
                e = embed.embed_texts(batch)["text_embedding"]
            if e.ndim != 2 or len(e) != len(batch):
                raise ValueError(f"{what}[{a}:]: {len(batch)} inputs gave embeddings {e.shape}")
            parts.append(np.asarray(e, dtype=np.float32))
            if progress:
                done = min(a + batch_size, len(items))
                print(f"\rembedded {what} {done}/{len(items)}", end="", file=sys.stderr, flush=True)
    finally:
        if progress:  # end the progress line, also before an error's message
            print(file=sys.stderr)
    return np.concatenate(parts)


def evaluate_retrieval(
    retriever: Embedder, split: KarpathySplit, batch_size: int = 64, progress: bool = False
) -> dict[str, float | int]:
    """Retrieval metrics of ``retriever`` on ``split`` (see mmfast.retrieval_metrics for the
    protocol: recalls in percent, pessimistic 1-based ranks). Every image file is checked to
    exist before any is embedded (a missing one is a FileNotFoundError naming it)."""
    batch_size = positive_int("batch_size", batch_size)
    missing = [p for p in split.image_paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the split's {len(split.image_paths)} images are missing "
            f"(first: {missing[0]})"
        )
    paths = [str(p) for p in split.image_paths]
    image_emb = _embed_all("images", paths, retriever, batch_size, progress)  # (I, D)
    text_emb = _embed_all("captions", split.captions, retriever, batch_size, progress)  # (T, D)
    m = retrieval_metrics_from_embeddings(text_emb, image_emb, split.image_of_text)
    return m.as_dict()
