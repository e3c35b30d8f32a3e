"""Data and batching helpers the tasks share."""

from __future__ import annotations

from pathlib import Path

import torch

from mmfast.tokenizer import WORD_LEVEL, Tokenizer

from ..coco import CaptionData

__all__ = ["caption_tokenizer", "chunks", "epoch_generator", "pad"]


def caption_tokenizer(data: CaptionData, resume: Path | None) -> Tokenizer:
    """A new run's tokenizer is built from the training captions; a resumed run keeps its own."""
    if resume is not None:
        return Tokenizer.load(resume / "vocab.txt")
    return Tokenizer.build(c for caps in data.captions for c in caps)


# Our own models' vocabularies are word-level: <pad> has the id WORD_LEVEL.pad (0).
PAD_ID = WORD_LEVEL.pad


def pad(seqs: list[list[int]], length: int | None = None) -> torch.Tensor:
    """Token id lists -> (N, T) long, padded with PAD_ID; T = ``length`` or the longest."""
    t = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), t), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:t]
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def chunks(idx: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Consecutive slices of ``idx`` of ``size`` (the last may be shorter)."""
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG of one epoch's order: resuming at any epoch gives the same batches."""
    return torch.Generator().manual_seed(seed * 100003 + epoch)
