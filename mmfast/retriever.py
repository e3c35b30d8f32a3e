"""Text-to-image retrieval over an exported bundle (ONNX Runtime, no torch).

    r = mmfast.Retriever.load("bundle/")
    r.add_images(paths)                      # embeds once; ids default to the paths
    ids, scores = r.search("a red circle left of a blue square", k=5)
    r.save("index/"); r2 = mmfast.Retriever.load("bundle/", index="index/")

Image embeddings go into an exact cosine index (mmfast.index). With ``rerank=True`` the top-k
are re-scored by the cross-attention re-ranker (the text attends over each candidate's
regions, kept from indexing time in float16): fused score = scale * cosine + re-ranker score,
as in training.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._pipeline import ImageLike, Pipeline
from .bundle import Bundle, Manifest
from .index import EmbeddingIndex

__all__ = ["Retriever"]


class Retriever(Pipeline):
    task = "retrieval"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(bundle, device, threads)
        cfg = bundle.manifest.retrieval
        assert cfg is not None  # a retrieval bundle's: checked at load
        self.can_rerank = cfg.rerank
        self.logit_scale = cfg.logit_scale
        self.max_len = cfg.max_len
        self.index = EmbeddingIndex(self._dim(), {"bundle": str(bundle.path)})
        self._regions: list[np.ndarray] = []  # float16 (N, D) per indexed image

    @classmethod
    def graph_files(cls, manifest: Manifest) -> list[str]:
        assert manifest.retrieval is not None  # a retrieval bundle's: checked at load
        rerank = ["reranker.onnx"] if manifest.retrieval.rerank else []
        return ["image_tower.onnx", "text_tower.onnx", *rerank]

    def _dim(self) -> int:
        out = self.sessions["image_tower.onnx"].inner.get_outputs()[0]
        return int(out.shape[-1])

    @classmethod
    def load(
        cls,
        bundle: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        index: str | Path | None = None,
    ) -> Retriever:
        """:meth:`Pipeline.load`, then, if given, the index saved by :meth:`save` there."""
        r = super().load(bundle, device, threads)
        if index is not None:
            r.load_index(index)
        return r

    def embed_images(self, images: Sequence[ImageLike]) -> dict[str, np.ndarray]:
        return self.run("image_tower.onnx", {"images": self.pixels(images)})

    def embed_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text[{i}]: expected a non-empty string, got {t!r}")
        return self.run("text_tower.onnx", {"tokens": self.tokens(texts, self.max_len)})

    def add_images(
        self,
        images: Sequence[ImageLike],
        ids: Sequence[str] | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> None:
        """Embed and index images. ids default to the paths (or running numbers)."""
        if ids is None:
            ids = [
                str(im) if isinstance(im, (str, Path)) else str(len(self.index) + i)
                for i, im in enumerate(images)
            ]
        if len(ids) != len(images):
            raise ValueError(f"ids: {len(ids)} ids for {len(images)} images")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        for start in range(0, len(images), batch_size):
            out = self.embed_images(images[start : start + batch_size])
            self.index.add(out["image_embedding"], ids[start : start + batch_size])
            if self.can_rerank:
                self._regions.extend(out["regions"].astype(np.float16))
            if progress:
                done = min(start + batch_size, len(images))
                print(f"\rindexed {done}/{len(images)}", end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)

    def search(
        self, text: str, k: int = 10, rerank: bool = False, rerank_k: int | None = None
    ) -> tuple[list[str], np.ndarray]:
        """The k best image ids for `text` and their scores (cosine, or the fused re-ranking
        score when ``rerank``; re-ranks the top max(k, rerank_k) candidates)."""
        if rerank and not self.can_rerank:
            raise ValueError("rerank: this bundle has no re-ranker")
        if rerank and len(self._regions) != len(self.index):
            raise ValueError("rerank: the index was saved without regions; rebuild it")
        t = self.embed_texts([text])
        pool = max(k, rerank_k or 10) if rerank else k
        rows, scores = self.index.search_rows(t["text_embedding"], pool)
        rows0, cos = rows[0], scores[0]
        ids0 = [self.index.id_at(j) for j in rows0]
        if not rerank:
            return ids0[:k], cos[:k]
        regions = np.stack([self._regions[j] for j in rows0]).astype(np.float32)
        p = len(ids0)
        s = self.run(
            "reranker.onnx",
            {
                "text_features": np.repeat(t["token_features"], p, 0),
                "text_mask": np.repeat(t["token_mask"], p, 0),
                "regions": regions,
            },
        )["score"]
        fused = self.logit_scale * cos + s
        order = np.argsort(-fused, kind="stable")[:k]
        return [ids0[j] for j in order], fused[order].astype(np.float32)

    def save(self, directory: str | Path) -> None:
        """Save the index (and the regions the re-ranker needs)."""
        self.index.save(directory)
        if self.can_rerank and self._regions:
            np.save(Path(directory) / "regions.npy", np.stack(self._regions))

    def load_index(self, directory: str | Path) -> None:
        index = EmbeddingIndex.load(directory)
        if index.dim != self.index.dim:
            raise ValueError(
                f"index: embeddings of dim {index.dim}, this model makes {self.index.dim}"
            )
        self.index = index
        rpath = Path(directory) / "regions.npy"
        self._regions = list(np.load(rpath)) if rpath.is_file() else []
