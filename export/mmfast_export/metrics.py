"""Evaluation metrics. Captioning scores come from pycocoevalcap (BLEU-1..4, CIDEr-D);
retrieval Recall@K and VQA accuracy are plain counting."""

from __future__ import annotations

from collections import defaultdict

import torch

from mmfast.tokenizer import split_words

__all__ = ["caption_scores", "recall_at_k", "vqa_accuracy"]


def caption_scores(refs: dict[int, list[str]], hyps: dict[int, str]) -> dict[str, float]:
    """Corpus BLEU-1..4 and CIDEr-D (pycocoevalcap). Text is lower-cased and split into words
    and punctuation (``mmfast.tokenizer.split_words``) in place of the Java PTB tokenizer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    keys = sorted(hyps)
    gts = {k: [" ".join(split_words(r)) for r in refs[k]] for k in keys}
    res = {k: [" ".join(split_words(hyps[k])) or "<empty>"] for k in keys}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    out = {f"bleu{i + 1}": float(b) for i, b in enumerate(bleu)}
    out["cider"] = float(cider)
    return out


def recall_at_k(
    scores: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...]
) -> dict[str, float]:
    """scores (Q, I) text-to-image similarities; target (Q,) the right image of each query.
    R@k: the fraction of queries whose right image is among the k best (ties count against)."""
    right = scores.gather(1, target[:, None])  # (Q, 1)
    # images scoring at least as high, itself excluded: a tie with another image counts
    # against (an untrained model scoring every image alike gets R@1 = 0, not 1)
    rank = (scores >= right).sum(1) - 1  # (Q,) 0 = first
    return {f"r@{k}": float((rank < k).float().mean()) for k in ks}


def vqa_accuracy(pred: list[str], gold: list[str], types: list[str]) -> dict[str, float]:
    """Exact-match accuracy, overall and per question type."""
    per: dict[str, list[int]] = defaultdict(list)
    for p, g, t in zip(pred, gold, types, strict=True):
        per[t].append(int(p == g))
    out = {
        "accuracy": sum(int(p == g) for p, g in zip(pred, gold, strict=True)) / max(len(gold), 1)
    }
    for t, v in sorted(per.items()):
        if t:
            out[f"accuracy_{t}"] = sum(v) / len(v)
    return out
