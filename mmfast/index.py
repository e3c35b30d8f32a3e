"""Exact nearest-neighbour search over L2-normalised embeddings (cosine similarity), torch-free.

Built for text-to-image retrieval: image embeddings are added once, text queries search them.
Scores are dot products of unit vectors (numpy's BLAS sgemm), top-k by partial sort. Saved as
a directory: ``embeddings.npy`` (float32, (n, d)), ``ids.json``, ``index.json`` (format, dim,
metadata such as the model that made the embeddings). Loading checks what saving guarantees
(unique string ids, finite unit-norm embeddings of the stated dim, one per id), so a corrupt
or edited index is refused instead of returning NaN or unnormalised scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._checks import positive_int

__all__ = ["EmbeddingIndex"]

INDEX_FORMAT = 1
FloatArray = npt.NDArray[np.float32]
# A saved embedding's norm may differ from 1 by float32 rounding (a few ulp over d terms);
# anything further was not written by save().
_UNIT_TOLERANCE = 1e-3


def _unit_rows(x: Any, dim: int, name: str) -> FloatArray:
    a = np.asarray(x, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (n, {dim}), got {np.shape(x)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or inf")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{name}: contains an all-zero vector (no direction to compare)")
    out: FloatArray = (a / norms).astype(np.float32)
    return out


class EmbeddingIndex:
    """Cosine-similarity index of (id, embedding) pairs; ids are unique strings."""

    def __init__(self, dim: int, metadata: dict[str, Any] | None = None) -> None:
        self.dim = positive_int("dim", dim)
        self.metadata = dict(metadata or {})
        self._emb: FloatArray = np.zeros((0, dim), np.float32)
        self._ids: list[str] = []
        self._id_set: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def id_at(self, row: int) -> str:
        """The id of the row-th added embedding."""
        return self._ids[int(row)]

    def check_ids(self, ids: Sequence[object]) -> list[str]:
        """`ids` as strings, ValueError if one is already in the index or repeated."""
        new = [str(i) for i in ids]
        dup = self._id_set.intersection(new) or (len(set(new)) != len(new) and {"(within ids)"})
        if dup:
            raise ValueError(f"ids: already in the index or repeated: {sorted(dup)[:5]}")
        return new

    def add(self, embeddings: Any, ids: Sequence[str] | None = None) -> None:
        """Add (n, dim) embeddings (normalised here) under `ids` (default: running numbers)."""
        e = _unit_rows(embeddings, self.dim, "embeddings")
        if ids is None:
            ids = [str(len(self._ids) + i) for i in range(len(e))]
        if len(ids) != len(e):
            raise ValueError(f"ids: {len(ids)} ids for {len(e)} embeddings")
        ids = self.check_ids(ids)
        self._emb = np.concatenate([self._emb, e]) if len(self._emb) else e
        self._ids.extend(ids)
        self._id_set.update(ids)

    def search(self, queries: Any, k: int = 10) -> tuple[list[list[str]], FloatArray]:
        """Top-k ids and cosine scores (descending) for each of (m, dim) queries."""
        rows, scores = self.search_rows(queries, k)
        return [[self._ids[j] for j in row] for row in rows], scores

    def search_rows(self, queries: Any, k: int = 10) -> tuple[np.ndarray, FloatArray]:
        """Like :meth:`search`, with row numbers (insertion order) instead of ids."""
        if not len(self):
            raise ValueError("search: the index is empty")
        k = positive_int("k", k)
        q = _unit_rows(queries, self.dim, "queries")
        k = min(k, len(self))
        scores = q @ self._emb.T  # (m, n)
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(self) else None
        if part is None:
            part = np.tile(np.arange(len(self)), (len(q), 1))
        top = np.take_along_axis(scores, part, 1)
        order = np.lexsort((part, -top), axis=1)  # score desc, then insertion order
        idx = np.take_along_axis(part, order, 1)
        result: FloatArray = np.take_along_axis(scores, idx, 1).astype(np.float32)
        return idx, result

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "embeddings.npy", self._emb)
        (d / "ids.json").write_text(json.dumps(self._ids))
        meta = {"format": INDEX_FORMAT, "dim": self.dim, "count": len(self), **self.metadata}
        (d / "index.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> EmbeddingIndex:
        """An index saved by :meth:`save`; ValueError naming the directory if it is not one, is
        corrupt or breaks what save() guarantees; OSError if a file cannot be read."""
        d = Path(directory)
        if not d.is_dir():
            raise ValueError(f"{d}: not an index directory (no such directory)")
        try:
            meta = json.loads((d / "index.json").read_text(encoding="utf-8"))
            ids = json.loads((d / "ids.json").read_text(encoding="utf-8"))
            # memory-mapped: a header claiming billions of rows fails (the file is shorter) or
            # is refused by the shape check below before anything is read into memory
            emb = np.load(d / "embeddings.npy", allow_pickle=False, mmap_mode="r")
        except FileNotFoundError as e:
            raise ValueError(f"{d}: not an index directory ({e.filename} missing)") from e
        except (ValueError, EOFError) as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
            raise ValueError(f"{d}: corrupt index ({e})") from e
        except RecursionError:
            raise ValueError(f"{d}: corrupt index (JSON nested too deeply)") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{d}: corrupt index (index.json is not an object)")
        version, dim = meta.get("format"), meta.get("dim")
        if type(version) is not int or type(dim) is not int or dim < 1 or version < 1:
            raise ValueError(f"{d}: corrupt index (index.json needs an int format and dim)")
        if version > INDEX_FORMAT:
            raise ValueError(f"{d}: index format {version} is newer than this mmfast")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ValueError(f"{d}: corrupt index (ids.json is not a list of strings)")
        if len(set(ids)) != len(ids):
            raise ValueError(f"{d}: corrupt index (ids.json repeats an id)")
        if emb.dtype != np.float32 or emb.shape != (len(ids), dim):
            raise ValueError(f"{d}: embeddings {emb.shape} do not match {len(ids)} ids x {dim}")
        if meta.get("count", len(ids)) != len(ids):
            raise ValueError(f"{d}: corrupt index ({meta['count']} in index.json, {len(ids)} ids)")
        emb = np.array(emb)  # into memory, now that its size is known to be right
        if not np.isfinite(emb).all():
            raise ValueError(f"{d}: corrupt index (embeddings contain NaN or inf)")
        norms = np.linalg.norm(emb, axis=1)
        if len(emb) and np.abs(norms - 1).max() > _UNIT_TOLERANCE:
            raise ValueError(f"{d}: corrupt index (embeddings are not unit vectors)")
        extra = {k: v for k, v in meta.items() if k not in ("format", "dim", "count")}
        index = cls(dim, extra)
        if len(ids):
            index._emb, index._ids, index._id_set = emb, list(ids), set(ids)
        return index
