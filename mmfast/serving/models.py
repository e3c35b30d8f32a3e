"""The served models: loading and warming the pipelines, and the batched call of each task.

Each ``*_batch`` function is a :class:`~mmfast.serving.batcher.Batcher`'s ``run_batch``: it
gets requests that share a key (the options that a pipeline call takes once for all its
images, e.g. the beam size) and makes one pipeline call for all of them, so the image encoder
and the decoding loop run once per batch. A request's result is what the same pipeline gives
for it alone (tests/export/test_serve.py checks it for every task).

No web types here: the app parses and checks requests, this module only runs models.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._pipeline import Pipeline
from ..captioner import Captioner
from ..retriever import Retriever
from ..vqa import VQA

__all__ = [
    "TASKS",
    "AnswerRequest",
    "CaptionRequest",
    "SearchRequest",
    "answer_batch",
    "caption_batch",
    "load_models",
    "search_batch",
    "warm_up",
]

# --bundle TASK=DIR: the pipeline class of each task the server can serve
TASKS: dict[str, type[Pipeline]] = {"caption": Captioner, "retrieval": Retriever, "vqa": VQA}


def load_models(
    bundles: Mapping[str, str | Path],
    device: str = "cpu",
    threads: int | None = None,
    index: str | Path | None = None,
) -> dict[str, Pipeline]:
    """Load each TASK -> bundle directory (a BundleError, ValueError or OSError names what
    is wrong); `index` is a saved retrieval index (Retriever.save) to serve."""
    models: dict[str, Pipeline] = {}
    for task, path in bundles.items():
        if task not in TASKS:
            raise ValueError(f"--bundle {task}=...: unknown task (one of {', '.join(TASKS)})")
        if task == "retrieval":
            models[task] = Retriever.load(path, device=device, threads=threads, index=index)
        else:
            models[task] = TASKS[task].load(path, device=device, threads=threads)
    if index is not None and "retrieval" not in models:
        raise ValueError("--index: needs a retrieval bundle (--bundle retrieval=DIR)")
    return models


def warm_up(model: Pipeline) -> None:
    """One call through every graph the server uses, so the first request does not pay for
    ONNX Runtime's lazy initialisation (what /readyz waits for)."""
    size = model.preprocess_config.size
    image = np.full((size, size, 3), 128, np.uint8)
    if isinstance(model, Captioner):
        model.caption([image], max_new_tokens=2)
    elif isinstance(model, VQA):
        model.answer_many([image], [["what is it?"]])
    elif isinstance(model, Retriever):
        model.embed_images([image])
        model.embed_texts(["a photo"])


# ------------------------------------------------------------------------------ caption


@dataclass(frozen=True)
class CaptionRequest:
    image: np.ndarray  # (H, W, 3) uint8
    beam_size: int | None
    max_new_tokens: int | None

    @property
    def key(self) -> Hashable:
        return ("caption", self.beam_size, self.max_new_tokens)


def caption_batch(model: Captioner, reqs: Sequence[CaptionRequest]) -> list[dict[str, Any]]:
    """One encoder call and one decoding loop for all the requests' images."""
    first = reqs[0]
    caps = model.caption(
        [r.image for r in reqs],
        beam_size=first.beam_size,
        max_new_tokens=first.max_new_tokens,
        batch_size=len(reqs),
    )
    return [{"caption": c.text, "score": c.score, "tokens": c.tokens} for c in caps]


# ------------------------------------------------------------------------------ answer


@dataclass(frozen=True)
class AnswerRequest:
    image: np.ndarray  # (H, W, 3) uint8
    questions: tuple[str, ...]
    top_k: int | None
    beam_size: int

    @property
    def key(self) -> Hashable:
        return ("answer", self.top_k, self.beam_size)


def answer_batch(model: VQA, reqs: Sequence[AnswerRequest]) -> list[dict[str, Any]]:
    """One answer_many call: each image encoded once, all questions in one pass."""
    first = reqs[0]
    answers = model.answer_many(
        [r.image for r in reqs],
        [list(r.questions) for r in reqs],
        top_k=first.top_k,
        beam_size=first.beam_size,
    )
    return [
        {
            "answers": [
                {
                    "question": q,
                    "answer": a.text,
                    "confidence": a.confidence,
                    "top": [{"answer": t, "score": s} for t, s in a.top],
                }
                for q, a in zip(r.questions, per_image, strict=True)
            ]
        }
        for r, per_image in zip(reqs, answers, strict=True)
    ]


# ------------------------------------------------------------------------------ search


@dataclass(frozen=True)
class SearchRequest:
    text: str | None  # a text query, or
    image: np.ndarray | None  # an image query (images like it)
    k: int
    rerank: bool = False

    @property
    def key(self) -> Hashable:
        # a re-ranked search runs the cross-attention re-ranker per query: not batched
        return ("search", "text" if self.text is not None else "image", self.rerank)


def search_batch(model: Retriever, reqs: Sequence[SearchRequest]) -> list[dict[str, Any]]:
    """Text queries: one text-tower call; image queries: one image-tower call. Each query
    is then looked up in the index on its own (a (1, dim) search, as Retriever.search does),
    so its scores do not depend on the other queries of the batch."""
    first = reqs[0]
    if first.rerank:
        assert all(r.text is not None for r in reqs)
        return [_found(*model.search(r.text or "", k=r.k, rerank=True)) for r in reqs]
    if first.text is not None:
        emb = model.embed_texts([r.text or "" for r in reqs])["text_embedding"]
    else:
        emb = model.embed_images([r.image for r in reqs if r.image is not None])["image_embedding"]
    if len(model.index) == 0:
        raise ValueError("search: the index is empty (add images first)")
    out = []
    for i, r in enumerate(reqs):
        ids, scores = model.index.search(emb[i : i + 1], r.k)
        out.append(_found(ids[0], scores[0]))
    return out


def _found(ids: Sequence[str], scores: np.ndarray) -> dict[str, Any]:
    return {"results": [{"id": i, "score": float(s)} for i, s in zip(ids, scores, strict=True)]}
