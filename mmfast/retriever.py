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

from ._checks import positive_int
from ._pipeline import ImageLike, Pipeline, as_image_list
from .bundle import Bundle, BundleMismatchError, Manifest
from .index import EmbeddingIndex

__all__ = ["Retriever"]

REGIONS = "regions.npy"  # the index's regions for the re-ranker, next to EmbeddingIndex's files


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

    def check_bundle(self) -> None:
        cfg = self.bundle.manifest.retrieval
        assert cfg is not None  # a retrieval bundle's: checked at load
        rerank = cfg.rerank
        regions = ["regions"] if rerank else []
        self.require_io("image_tower.onnx", ["images"], ["image_embedding", *regions])
        text = ["token_features", "token_mask"] if rerank else []
        self.require_io("text_tower.onnx", ["tokens"], ["text_embedding", *text])
        if rerank:
            self.require_io("reranker.onnx", ["text_features", "text_mask", "regions"], ["score"])
        dim = self._dim()
        why = f"image_tower.onnx's image_embedding has {dim}"
        self.require_dim("text_tower.onnx", "text_embedding", -1, dim, why)

    def _dim(self) -> int:
        dim = self.fixed_dim("image_tower.onnx", "image_embedding", -1)
        if dim is None:
            raise BundleMismatchError(
                f"{self.bundle.path / 'image_tower.onnx'}: image_embedding has no fixed size "
                "(the index needs one)"
            )
        return dim

    def _region_shape(self) -> tuple[int | None, int | None]:
        """(N, D) of an image's regions as the image tower fixes them (None: not fixed)."""
        g = "image_tower.onnx"
        return self.fixed_dim(g, "regions", 1), self.fixed_dim(g, "regions", 2)

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
        return self.embed_images_from(as_image_list(images), 0)

    def embed_images_from(self, images: Sequence[ImageLike], first: int) -> dict[str, np.ndarray]:
        """embed_images of images[first : first + len(images)] of a caller's list."""
        return self.run("image_tower.onnx", {"images": self.pixels(images, first)})

    def embed_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
            raise ValueError(f"texts: expected a non-empty list of strings, got {texts!r:.60}")
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
        """Embed and index images (an image or a sequence of them). ids default to the paths
        (or running numbers). All or nothing: if an image cannot be read, none is added."""
        images = as_image_list(images)
        if ids is None:
            ids = [
                str(im) if isinstance(im, (str, Path)) else str(len(self.index) + i)
                for i, im in enumerate(images)
            ]
        elif isinstance(ids, str) or not isinstance(ids, Sequence):
            raise TypeError(f"ids: expected a sequence of strings, got {type(ids).__name__}")
        if len(ids) != len(images):
            raise ValueError(f"ids: {len(ids)} ids for {len(images)} images")
        ids = self.index.check_ids(ids)  # before any embedding: a repeated id fails at once
        batch_size = positive_int("batch_size", batch_size)
        embeddings: list[np.ndarray] = []
        regions: list[np.ndarray] = []
        try:
            for start in range(0, len(images), batch_size):
                out = self.embed_images_from(images[start : start + batch_size], start)
                embeddings.append(out["image_embedding"])
                if self.can_rerank:
                    regions.extend(out["regions"].astype(np.float16))
                if progress:
                    done = min(start + batch_size, len(images))
                    print(f"\rindexed {done}/{len(images)}", end="", file=sys.stderr, flush=True)
        finally:
            if progress:  # end the progress line, also before an error's message
                print(file=sys.stderr)
        if embeddings:
            self.index.add(np.concatenate(embeddings), ids)
            self._regions.extend(regions)

    def search(
        self, text: str, k: int = 10, rerank: bool = False, rerank_k: int | None = None
    ) -> tuple[list[str], np.ndarray]:
        """The k best image ids for `text` and their scores (cosine, or the fused re-ranking
        score when ``rerank``; re-ranks the top max(k, rerank_k) candidates)."""
        k = positive_int("k", k)
        if rerank_k is not None:
            rerank_k = positive_int("rerank_k", rerank_k)
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
        rpath = Path(directory) / REGIONS
        if self.can_rerank and self._regions:
            np.save(rpath, np.stack(self._regions))
        else:  # an earlier index's regions there would be taken for this one's
            rpath.unlink(missing_ok=True)

    def load_index(self, directory: str | Path) -> None:
        """Load an index saved by :meth:`save` (ValueError if it is corrupt or was made by a
        model of another embedding size; its regions if they fit this re-ranker)."""
        index = EmbeddingIndex.load(directory)
        if index.dim != self.index.dim:
            raise ValueError(
                f"index: embeddings of dim {index.dim}, this model makes {self.index.dim}"
            )
        rpath = Path(directory) / REGIONS
        regions: list[np.ndarray] = []
        if self.can_rerank and rpath.is_file():
            regions = list(self._load_regions(rpath, len(index)))
        self.index, self._regions = index, regions

    def _load_regions(self, path: Path, count: int) -> np.ndarray:
        """regions.npy -> (count, N, D) float16, checked against the image tower."""
        try:
            r: np.ndarray = np.load(path, allow_pickle=False, mmap_mode="r")  # see index.load
        except (ValueError, EOFError) as e:
            raise ValueError(f"{path}: corrupt regions ({e})") from e
        n, d = self._region_shape()
        want = f"({count}, {n or 'N'}, {d or 'D'}) float16"
        if (
            r.dtype != np.float16
            or r.ndim != 3
            or len(r) != count
            or (n is not None and r.shape[1] != n)
            or (d is not None and r.shape[2] != d)
        ):
            raise ValueError(f"{path}: regions {r.shape} {r.dtype}, expected {want}")
        r = np.array(r)  # into memory (and off the file, which save() may overwrite)
        if not np.isfinite(r).all():
            raise ValueError(f"{path}: regions contain NaN or inf")
        return r
