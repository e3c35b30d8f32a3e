"""Image-text matching re-ranker over an exported ``rerank`` bundle (ONNX Runtime, no torch):
Hugging Face BLIP's ITM head (``BlipForImageTextRetrieval``, ``use_itm_head=True``).

    rr = mmfast.Reranker.load("bundle/")
    feats = rr.image_features(paths)            # (B, N, D) once per image, kept by the caller
    p = rr.score("a dog on a beach", feats)     # (B,) P(match) of the text with each image
    order, scores = rr.rank("a dog on a beach", paths)

A retriever finds candidates by embedding similarity; this re-scores a few of them with a
model that reads the text and the image together (the text encoder cross-attends to every
image position), which is slower per pair and better at telling close candidates apart.

Graphs: ``image_encoder.onnx`` (``images`` (B, 3, S, S) -> ``image_features`` (B, N, D)) and
``itm.onnx`` (``tokens`` (B, T), ``token_mask`` (B, T), ``image_features`` (B, N, D) ->
``score`` (B,) = softmax(itm_logits)[:, 1], ``itm_logits`` (B, 2)). A text is the tokenizer's
"[CLS] text [SEP]", cut to the bundle's ``rerank.max_len`` tokens as transformers'
``truncation=True`` cuts it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._checks import positive_int
from ._pipeline import ImageLike, Pipeline, as_image_list, pad_tokens
from .bundle import Bundle, BundleFormatError, BundleMismatchError, Manifest
from .hf_tokenizer import HFTokenizer

__all__ = ["Reranker"]

IMAGE, ITM = "image_encoder.onnx", "itm.onnx"


def _check_text(name: str, text: object) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name}: expected a non-empty string, got {text!r:.60}")
    return text


class Reranker(Pipeline):
    """A rerank bundle loaded for inference. Thread-safe (sessions are)."""

    task = "rerank"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(bundle, device, threads)
        cfg = bundle.manifest.rerank
        assert cfg is not None  # a rerank bundle's: checked at load
        self.max_len = cfg.max_len  # text tokens at most, special tokens included

    @classmethod
    def graph_files(cls, manifest: Manifest) -> list[str]:
        return [IMAGE, ITM]

    def check_bundle(self) -> None:
        if not isinstance(self.tokenizer, HFTokenizer):
            # the texts are cut as the model's tokenizer cuts them: a tokenizer.json's
            raise BundleFormatError(
                f"{self.bundle.path}: a rerank bundle's vocab must be a Hugging Face "
                "tokenizer.json (the manifest has no 'tokenizer' section)"
            )
        self._tok: HFTokenizer = self.tokenizer
        self.require_io(IMAGE, ["images"], ["image_features"])
        self.require_io(ITM, ["tokens", "token_mask", "image_features"], ["score", "itm_logits"])
        dim = self.fixed_dim(IMAGE, "image_features", 2) or self.fixed_dim(ITM, "image_features", 2)
        if dim is None:  # what image_features arguments are checked against
            raise BundleMismatchError(
                f"{self.bundle.path / IMAGE}: image_features has no fixed size on axis 2"
            )
        self.feature_dim: int = dim
        why = f"{IMAGE}'s image_features have {dim} channels"
        self.require_dim(ITM, "image_features", 2, dim, why)
        # the image positions ([CLS] + patches): fixed by the image size, if the graph says so
        self.positions: int | None = self.fixed_dim(IMAGE, "image_features", 1)
        if self.positions is not None:
            why = f"{IMAGE} makes {self.positions} image positions"
            self.require_dim(ITM, "image_features", 1, self.positions, why)

    # ------------------------------------------------------------------------ images

    def image_features(
        self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 32
    ) -> np.ndarray:
        """Images (paths, PIL images or (H, W, 3) uint8 arrays; one or a sequence) -> their
        features (B, N, D) float32, in batches of batch_size. Errors name images[i]."""
        images = as_image_list(images)
        if len(images) == 0:
            raise ValueError("images: no images")
        batch_size = positive_int("batch_size", batch_size)
        out = []
        for s in range(0, len(images), batch_size):
            pixels = self.pixels(images[s : s + batch_size], s)  # (b, 3, S, S)
            out.append(self.run(IMAGE, {"images": pixels})["image_features"])  # (b, N, D)
        return np.concatenate(out).astype(np.float32, copy=False)

    def _features(self, image_features: object, name: str = "image_features") -> np.ndarray:
        """The caller's features, checked and made (B, N, D) float32 contiguous (float16,
        e.g. as an index stores them, is taken and converted)."""
        if not isinstance(image_features, np.ndarray):
            raise TypeError(
                f"{name}: expected a numpy array (B, N, D), got {type(image_features).__name__}"
            )
        f = image_features
        n = self.positions or "N"
        want = f"(B, {n}, {self.feature_dim})"
        if f.dtype.kind != "f":
            raise ValueError(f"{name}: expected a float array {want}, got dtype {f.dtype}")
        wrong_n = self.positions is not None and f.ndim == 3 and f.shape[1] != self.positions
        if f.ndim != 3 or f.shape[2] != self.feature_dim or len(f) == 0 or wrong_n:
            raise ValueError(f"{name}: expected shape {want}, got {f.shape}")
        f = np.ascontiguousarray(f, dtype=np.float32)
        if not np.isfinite(f).all():
            raise ValueError(f"{name}: contains NaN or inf")
        return f

    # ------------------------------------------------------------------------ scores

    def encode(self, text: str, name: str = "text") -> list[int]:
        """The ids the model reads for `text`: [CLS] text [SEP], the text's tokens cut to fit
        max_len as transformers' ``truncation=True`` cuts them. `name`: the argument's name
        in errors."""
        return self._tok.encode(_check_text(name, text), max_length=self.max_len)

    def _run_itm(self, ids: list[list[int]], feats: np.ndarray) -> np.ndarray:
        """One itm.onnx run: ids[i] (padded) against feats[i] -> P(match) (B,) float32."""
        tokens = pad_tokens(ids, self.max_len, self._tok.pad_id)  # (B, T)
        mask = np.zeros(tokens.shape, np.int64)  # 1 on a text's tokens, 0 on padding
        for i, x in enumerate(ids):
            mask[i, : len(x)] = 1
        out = self.run(ITM, {"tokens": tokens, "token_mask": mask, "image_features": feats})
        return np.asarray(out["score"], np.float32).reshape(len(ids))

    def score(self, text: str, image_features: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """P(match) (B,) float32 of `text` with each image, image_features (B, N, D) from
        :meth:`image_features`. The text's tokens are repeated over a batch of images, one run
        per batch_size images (bounds the memory: the cross-attention's keys and values)."""
        ids = self.encode(text)
        feats = self._features(image_features)
        batch_size = positive_int("batch_size", batch_size)
        out = []
        for s in range(0, len(feats), batch_size):
            chunk = feats[s : s + batch_size]  # (b, N, D)
            out.append(self._run_itm([ids] * len(chunk), chunk))
        return np.concatenate(out)

    def score_pairs(
        self, texts: Sequence[str], image_features: np.ndarray, batch_size: int = 32
    ) -> np.ndarray:
        """P(match) (B,) float32 of texts[i] with image i (one text per image)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"texts: expected a list of strings, got {type(texts).__name__}")
        ids = [self.encode(t, f"texts[{i}]") for i, t in enumerate(texts)]
        feats = self._features(image_features)
        if len(ids) != len(feats):
            raise ValueError(f"texts: {len(ids)} texts for {len(feats)} images' features")
        batch_size = positive_int("batch_size", batch_size)
        return np.concatenate(
            [
                self._run_itm(ids[s : s + batch_size], feats[s : s + batch_size])
                for s in range(0, len(feats), batch_size)
            ]
        )

    def rank(
        self, text: str, images: Sequence[ImageLike] | ImageLike, batch_size: int = 32
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images ordered by P(match) with `text`: (order, scores), order (B,) int64 the
        indices into images, best first; scores (B,) float32 in that order (scores[i] is
        images[order[i]]'s). Ties keep the images' order."""
        _check_text("text", text)
        s = self.score(text, self.image_features(images, batch_size), batch_size)
        order = np.argsort(-s, kind="stable")
        return order, s[order]

    def __repr__(self) -> str:
        device = self.sessions[ITM].device
        return f"Reranker({self.bundle.path}, kind={self.bundle.manifest.kind}, device={device})"
