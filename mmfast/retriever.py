"""Text-to-image and image-to-text retrieval, and zero-shot labels, over an exported bundle
(ONNX Runtime, no torch): mmfast's own dual encoder, or a Hugging Face CLIP / SigLIP.

    r = mmfast.Retriever.load("bundle/")
    r.add_images(paths)                      # embeds once; ids default to the paths
    ids, scores = r.search("a red circle left of a blue square", k=5)
    r.add_texts(captions)                    # image -> text search over these
    ids, scores = r.search_texts("photo.jpg", k=5)
    probs = r.classify("photo.jpg", ["cat", "dog"])       # zero-shot
    r.save("index/"); r2 = mmfast.Retriever.load("bundle/", index="index/")

Embeddings go into a cosine index (:mod:`mmfast.index`). ``search(..., rerank=True)`` re-scores
the top candidates with a re-ranker:
- an attached image-text matching model (:meth:`attach_reranker`: a BLIP ITM bundle,
  :class:`mmfast.Reranker`): score = P(match), the candidates re-ordered by it; its image
  features are computed when the images are added (they must be attached first) and kept;
- or the own bundle's cross-attention re-ranker (the text attends over each candidate's
  regions, kept from indexing time in float16): fused score = scale * cosine + re-ranker
  score, as in training.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._checks import positive_int
from ._pipeline import ImageLike, Pipeline, as_image_list, pad_tokens
from .bundle import Bundle, BundleMismatchError, Manifest
from .hf_tokenizer import HFTokenizer
from .index import VectorIndex, make_index, open_index

if TYPE_CHECKING:
    from .reranker import Reranker

__all__ = ["Retriever"]

REGIONS = "regions.npy"  # the own re-ranker's regions, in the index's id order
RERANK_FEATURES = "rerank_features.npy"  # an attached re-ranker's image features, likewise
RERANK_INFO = "rerank.json"  # which re-ranker made them
TEXTS = "texts"  # the text index (image -> text search), a sub-directory
# texts of similar length run together in groups of this many (see embed_texts)
_LENGTH_GROUP = 8


def _texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise ValueError(f"{name}: expected a non-empty list of strings, got {texts!r:.60}")
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise ValueError(f"{name}[{i}]: expected a non-empty string, got {t!r:.60}")
    return list(texts)


class Retriever(Pipeline):
    task = "retrieval"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(bundle, device, threads)
        cfg = bundle.manifest.retrieval
        assert cfg is not None  # a retrieval bundle's: checked at load
        self.can_rerank = cfg.rerank
        self.logit_scale = cfg.logit_scale
        self.logit_bias = cfg.logit_bias
        self.activation = cfg.activation
        self.max_len = cfg.max_len
        self._pad_to_max_len = cfg.pad_to_max_len
        # what an index records of the model that made it: its image tower's sha256
        self.model_id = bundle.manifest.files["image_tower.onnx"]
        self.index: VectorIndex = make_index(self._dim(), "exact", metadata=self._metadata())
        self.text_index: VectorIndex = make_index(self._dim(), "exact", metadata=self._metadata())
        self._regions: dict[str, np.ndarray] = {}  # image id -> float16 (N, D), own re-ranker
        self.reranker: Reranker | None = None
        self._features: dict[str, np.ndarray] = {}  # image id -> float16, attached re-ranker

    def use_index(
        self, backend: str = "auto", expected_size: int | None = None, **params: Any
    ) -> None:
        """Index images with another backend (:func:`mmfast.index.make_index`: "exact",
        "hnsw", "ivfpq" or "auto", which picks by `expected_size`; params such as ef_search or
        nprobe go to it). Only while no image is indexed."""
        if len(self.index):
            raise ValueError(
                f"use_index: the index already holds {len(self.index)} images; choose the "
                "backend before adding any"
            )
        self.index = make_index(
            self.index.dim,
            backend,
            expected_size=expected_size,
            metadata=self._metadata(),
            **params,
        )

    def _metadata(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle.path), "model": self.model_id}

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
        reranker: str | Path | None = None,
    ) -> Retriever:
        """:meth:`Pipeline.load`, then, if given, the re-ranker bundle to attach and the index
        saved by :meth:`save` there."""
        r = super().load(bundle, device, threads)
        if reranker is not None:
            r.attach_reranker(reranker)
        if index is not None:
            r.load_index(index)
        return r

    # ------------------------------------------------------------------------ embeddings

    def embed_images(self, images: Sequence[ImageLike]) -> dict[str, np.ndarray]:
        """The image tower's outputs: image_embedding (B, E) (and regions for the own
        re-ranker)."""
        return self.embed_images_from(as_image_list(images), 0)

    def embed_images_from(self, images: Sequence[ImageLike], first: int) -> dict[str, np.ndarray]:
        """embed_images of images[first : first + len(images)] of a caller's list."""
        return self.run("image_tower.onnx", {"images": self.pixels(images, first)})

    def embed_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The text tower's outputs: text_embedding (B, E) (and the own re-ranker's token
        features). A text longer than the model takes is cut (its end token kept)."""
        texts = _texts(texts, "texts")
        causal = isinstance(self.tokenizer, HFTokenizer) and not self._pad_to_max_len  # CLIP
        if not causal or self.can_rerank or len(texts) <= _LENGTH_GROUP:
            tokens = self.tokens(texts, self.max_len, fixed=self._pad_to_max_len)
            return self.run("text_tower.onnx", {"tokens": tokens})
        # A text's embedding does not depend on the padding after it (CLIP's tower is causal
        # and pools at its end token; the export checks it against the model with its mask),
        # so a batch runs as groups of similar length: 32 captions padded to the longest of
        # all cost ~3x the tokens they hold (benchmarks/README.md, "CLIP embeddings").
        assert isinstance(self.tokenizer, HFTokenizer)  # `causal` above
        ids = [self.tokenizer.encode(t, max_length=self.max_len) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = np.empty((len(texts), self.index.dim), np.float32)
        for g in range(0, len(order), _LENGTH_GROUP):
            rows = order[g : g + _LENGTH_GROUP]
            batch = pad_tokens([ids[i] for i in rows], self.max_len, self.tokenizer.pad_id)
            out[rows] = self.run("text_tower.onnx", {"tokens": batch})["text_embedding"]
        return {"text_embedding": out}

    # ------------------------------------------------------------------------ the indexes

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
        features: list[np.ndarray] = []
        try:
            for start in range(0, len(images), batch_size):
                batch = images[start : start + batch_size]
                out = self.embed_images_from(batch, start)
                embeddings.append(out["image_embedding"])
                if self.can_rerank:
                    regions.extend(out["regions"].astype(np.float16))
                if self.reranker is not None:
                    f = self.reranker.image_features(batch)  # decoded fine just above
                    features.extend(f.astype(np.float16))
                if progress:
                    done = min(start + batch_size, len(images))
                    print(f"\rindexed {done}/{len(images)}", end="", file=sys.stderr, flush=True)
        finally:
            if progress:  # end the progress line, also before an error's message
                print(file=sys.stderr)
        if embeddings:
            self.index.add(np.concatenate(embeddings), ids)
            self._regions.update(zip(ids, regions, strict=False))
            self._features.update(zip(ids, features, strict=False))

    def add_texts(
        self, texts: Sequence[str], ids: Sequence[str] | None = None, batch_size: int = 256
    ) -> None:
        """Embed and index texts for :meth:`search_texts`; ids default to the texts. All or
        nothing, as add_images."""
        texts = _texts(texts, "texts")
        ids = self.text_index.check_ids(texts if ids is None else ids)
        if len(ids) != len(texts):
            raise ValueError(f"ids: {len(ids)} ids for {len(texts)} texts")
        batch_size = positive_int("batch_size", batch_size)
        parts = [
            self.embed_texts(texts[s : s + batch_size])["text_embedding"]
            for s in range(0, len(texts), batch_size)
        ]
        self.text_index.add(np.concatenate(parts), ids)

    def remove(self, ids: Sequence[str]) -> None:
        """Remove images from the index by id (ValueError naming unknown ids; then none is
        removed)."""
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise TypeError(f"ids: expected a sequence of strings, got {type(ids).__name__}")
        ids = [str(i) for i in ids]
        self.index.remove(ids)
        for i in ids:
            self._regions.pop(i, None)
            self._features.pop(i, None)

    # ------------------------------------------------------------------------ search

    def search(
        self, text: str, k: int = 10, rerank: bool = False, rerank_k: int | None = None
    ) -> tuple[list[str], np.ndarray]:
        """The k best image ids for `text` and their scores (cosine; with ``rerank`` the
        re-ranker's score, see the module docstring; re-ranks the top max(k, rerank_k)
        candidates, rerank_k defaulting to 10)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text: expected a non-empty string, got {text!r:.60}")
        k = positive_int("k", k)
        if rerank_k is not None:
            rerank_k = positive_int("rerank_k", rerank_k)
        if rerank:
            self._check_rerank()
        t = self.embed_texts([text])
        pool = max(k, rerank_k or 10) if rerank else k
        found, scores = self.index.search(t["text_embedding"], pool)
        ids0, cos = found[0], scores[0]
        if not rerank:
            return ids0[:k], cos[:k]
        if self.reranker is not None:
            feats = np.stack([self._features[i] for i in ids0]).astype(np.float32)
            s = self.reranker.score(text, feats)
        else:
            s = self._own_rerank(t, [self._regions[i] for i in ids0], cos)
        order = np.argsort(-s, kind="stable")[:k]  # ties keep the first stage's order
        return [ids0[j] for j in order], s[order].astype(np.float32)

    def _check_rerank(self) -> None:
        if self.reranker is not None:
            if len(self._features) != len(self.index):
                raise ValueError(
                    "rerank: some indexed images have no re-ranker features (attach the "
                    "re-ranker before adding them, or rebuild the index with it attached)"
                )
        elif not self.can_rerank:
            raise ValueError("rerank: this bundle has no re-ranker; attach one (attach_reranker)")
        elif len(self._regions) != len(self.index):
            raise ValueError("rerank: the index was saved without regions; rebuild it")

    def _own_rerank(
        self, t: dict[str, np.ndarray], regions: list[np.ndarray], cos: np.ndarray
    ) -> np.ndarray:
        p = len(regions)
        s = self.run(
            "reranker.onnx",
            {
                "text_features": np.repeat(t["token_features"], p, 0),
                "text_mask": np.repeat(t["token_mask"], p, 0),
                "regions": np.stack(regions).astype(np.float32),
            },
        )["score"]
        fused: np.ndarray = self.logit_scale * cos + s
        return fused

    def search_texts(self, image: ImageLike, k: int = 10) -> tuple[list[str], np.ndarray]:
        """The k best text ids (see add_texts) for an image and their cosine scores."""
        k = positive_int("k", k)
        if isinstance(image, Sequence) and not isinstance(image, (str, Path)):
            raise TypeError("image: expected one image (a path, PIL image or array)")
        e = self.embed_images([image])["image_embedding"]
        found, scores = self.text_index.search(e, k)
        return found[0], scores[0]

    def classify(
        self, images: ImageLike | Sequence[ImageLike], labels: Sequence[str], template: str = "{}"
    ) -> np.ndarray:
        """Zero-shot label probabilities: (L,) for one image, (B, L) for a sequence, in the
        order of `labels`. Each label is put into `template` ("a photo of a {}." is CLIP's
        usual prompt); probabilities as the model's logits_per_image make them (CLIP: softmax
        over the labels, SigLIP: a sigmoid each)."""
        labels = _texts(labels, "labels")
        if not isinstance(template, str) or "{}" not in template:
            raise ValueError(f"template: expected a string with a {{}}, got {template!r:.60}")
        if len(set(labels)) != len(labels):
            raise ValueError("labels: a label is repeated")
        one = not isinstance(images, Sequence) or isinstance(images, (str, Path))
        e_img = self.embed_images(as_image_list(images))["image_embedding"].astype(np.float64)
        texts = [template.replace("{}", label) for label in labels]
        e_txt = self.embed_texts(texts)["text_embedding"].astype(np.float64)
        logits = self.logit_scale * (e_img @ e_txt.T) + self.logit_bias  # (B, L)
        if self.activation == "sigmoid":
            p = 1 / (1 + np.exp(-logits))
        else:
            z = np.exp(logits - logits.max(1, keepdims=True))
            p = z / z.sum(1, keepdims=True)
        out = p.astype(np.float32)
        return out[0] if one else out

    # ------------------------------------------------------------------------ re-ranker

    def attach_reranker(self, reranker: str | Path | Reranker, threads: int | None = None) -> None:
        """Use an image-text matching bundle (a path, or a loaded :class:`Reranker`) for
        ``search(..., rerank=True)``. Images added from now on get its features; those
        already indexed do not (rebuild, or load an index saved with this re-ranker)."""
        from .reranker import Reranker

        if not isinstance(reranker, Reranker):
            reranker = Reranker.load(reranker, threads=threads)
        self.reranker = reranker
        self._features = {}

    def _reranker_id(self) -> str | None:
        if self.reranker is None:
            return None
        # the features come from its image encoder: that graph's sha256 names them
        return self.reranker.bundle.manifest.files["image_encoder.onnx"]

    # ------------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Save the index, the text index and the re-rankers' image data."""
        d = Path(directory)
        self.index.save(d)
        order = self.index.ids
        rpath, fpath, info = d / REGIONS, d / RERANK_FEATURES, d / RERANK_INFO
        if self.can_rerank and self._regions and len(self._regions) == len(order):
            np.save(rpath, np.stack([self._regions[i] for i in order]))
        else:  # an earlier index's regions there would be taken for this one's
            rpath.unlink(missing_ok=True)
        if self.reranker is not None and self._features and len(self._features) == len(order):
            np.save(fpath, np.stack([self._features[i] for i in order]))
            info.write_text(json.dumps({"reranker": self._reranker_id()}))
        else:
            fpath.unlink(missing_ok=True)
            info.unlink(missing_ok=True)
        if len(self.text_index):
            self.text_index.save(d / TEXTS)

    def load_index(self, directory: str | Path) -> None:
        """Load an index saved by :meth:`save` (ValueError if it is corrupt or was made by
        another model; its re-ranker data if it fits this retriever's re-rankers)."""
        d = Path(directory)
        index = self._load_one(d, "index")
        texts = self._load_one(d / TEXTS, "index texts") if (d / TEXTS).is_dir() else None
        order = index.ids
        regions: dict[str, np.ndarray] = {}
        if self.can_rerank and (d / REGIONS).is_file():
            regions = dict(zip(order, self._load_regions(d / REGIONS, len(order)), strict=True))
        features: dict[str, np.ndarray] = {}
        if self.reranker is not None and (d / RERANK_FEATURES).is_file():
            made_by = self._read_rerank_info(d / RERANK_INFO)
            if made_by == self._reranker_id():
                f = self._load_features(d / RERANK_FEATURES, len(order))
                features = dict(zip(order, f, strict=True))
        self.index, self._regions, self._features = index, regions, features
        if texts is not None:
            self.text_index = texts

    def _load_one(self, d: Path, name: str) -> VectorIndex:
        index = open_index(d)
        if index.dim != self.index.dim:
            raise ValueError(
                f"{name}: embeddings of dim {index.dim}, this model makes {self.index.dim}"
            )
        model = index.metadata.get("model")
        if model is not None and model != self.model_id:
            raise ValueError(
                f"{name}: {d} was made by another model (its image tower's sha256 is "
                f"{str(model)[:12]}..., this bundle's {self.model_id[:12]}...)"
            )
        index.metadata.update(self._metadata())
        return index

    @staticmethod
    def _read_rerank_info(path: Path) -> str | None:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable ({e})") from e
        made_by: object = info.get("reranker") if isinstance(info, dict) else None
        return made_by if isinstance(made_by, str) else None

    def _load_regions(self, path: Path, count: int) -> np.ndarray:
        """regions.npy -> (count, N, D) float16, checked against the image tower."""
        return _load_f16(path, count, self._region_shape(), "regions")

    def _load_features(self, path: Path, count: int) -> np.ndarray:
        assert self.reranker is not None
        shape = (self.reranker.positions, self.reranker.feature_dim)
        return _load_f16(path, count, shape, "re-ranker features")


def _load_f16(
    path: Path, count: int, shape: tuple[int | None, int | None], what: str
) -> np.ndarray:
    """A saved (count, N, D) float16 array, checked (fixed sizes, finite) before use."""
    try:
        r: np.ndarray = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, EOFError) as e:
        raise ValueError(f"{path}: corrupt {what} ({e})") from e
    n, d = shape
    want = f"({count}, {n or 'N'}, {d or 'D'}) float16"
    if (
        r.dtype != np.float16
        or r.ndim != 3
        or len(r) != count
        or (n is not None and r.shape[1] != n)
        or (d is not None and r.shape[2] != d)
    ):
        raise ValueError(f"{path}: {what} {r.shape} {r.dtype}, expected {want}")
    r = np.array(r)  # into memory (and off the file, which save() may overwrite)
    if not np.isfinite(r).all():
        raise ValueError(f"{path}: {what} contain NaN or inf")
    return r
