"""The interface every index backend implements, and what they share: ids, input checks, the
search contract and the save protocol.

Each stored vector has a *label*: its position in insertion order (an int64, FAISS's id). The
base class maps labels to string ids. A backend that cannot delete in place (HNSW) or deletes
lazily keeps a removed label as a tombstone (id None) until it compacts; compaction renumbers
the surviving labels in order, so label order stays insertion order (the tie-break).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from .._checks import positive_int
from ._files import INDEX_FORMAT, atomic_directory, write_json
from ._vectors import FloatArray, IntArray, topk_by_score_then_label, unit_rows

__all__ = ["VectorIndex"]

T = TypeVar("T", bound="VectorIndex")


def _sequence(ids: Sequence[object]) -> Sequence[object]:
    # a lone string is a sequence of characters: almost surely a mistake for [id]
    if isinstance(ids, str | bytes):
        raise ValueError(f"ids: expected a sequence of ids, got the single string {ids!r}")
    return ids


class VectorIndex(ABC):
    """Cosine-similarity index of (id, embedding) pairs; ids are unique strings.

    ``metadata`` is free-form (JSON-serialisable) and saved with the index; the retriever keeps
    the identity of the model that made the embeddings there.
    """

    backend: ClassVar[str]
    # compact when more than this fraction of labels are tombstones (0: at every remove)
    compact_fraction: ClassVar[float] = 0.25

    def __init__(self, dim: int, metadata: dict[str, Any] | None = None) -> None:
        self.dim = positive_int("dim", dim)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self._label_ids: list[str | None] = []  # label -> id; None: removed (tombstone)
        self._labels: dict[str, int] = {}  # id -> label
        self._live: npt.NDArray[np.bool_] = np.zeros(0, bool)  # label -> not removed

    # ---- ids -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, id: object) -> bool:
        return id in self._labels

    @property
    def ids(self) -> list[str]:
        """The ids, in insertion order."""
        return [i for i in self._label_ids if i is not None]

    def check_ids(self, ids: Sequence[object]) -> list[str]:
        """`ids` as strings, ValueError if one is already in the index or repeated."""
        new = [str(i) for i in _sequence(ids)]
        dup = set(self._labels).intersection(new) or (
            len(set(new)) != len(new) and {"(within ids)"}
        )
        if dup:
            raise ValueError(f"ids: already in the index or repeated: {sorted(dup)[:5]}")
        return new

    def _default_ids(self, n: int) -> list[str]:
        out: list[str] = []
        i = len(self)
        while len(out) < n:
            if str(i) not in self._labels:
                out.append(str(i))
            i += 1
        return out

    # ---- mutation ------------------------------------------------------------------------------
    def add(self, embeddings: Any, ids: Sequence[object] | None = None) -> None:
        """Add (n, dim) embeddings (normalised here) under `ids` (default: running numbers).
        Everything is checked before anything changes: a bad call leaves the index as it was."""
        e = unit_rows(embeddings, self.dim, "embeddings")  # (n, dim)
        if ids is None:
            ids = self._default_ids(len(e))
        if len(ids) != len(e):
            raise ValueError(f"ids: {len(ids)} ids for {len(e)} embeddings")
        new = self.check_ids(ids)
        if not new:
            return
        first = len(self._label_ids)
        self._add(e, np.arange(first, first + len(e), dtype=np.int64))
        self._label_ids.extend(new)
        self._labels.update(zip(new, range(first, first + len(new)), strict=True))
        self._live = np.concatenate([self._live, np.ones(len(new), bool)])

    def remove(self, ids: Sequence[object]) -> int:
        """Remove `ids` (each must be in the index: ValueError naming the unknown ones, and then
        nothing is removed); returns how many were removed."""
        wanted = list(dict.fromkeys(str(i) for i in _sequence(ids)))  # once each, in order
        unknown = [i for i in wanted if i not in self._labels]
        if unknown:
            raise ValueError(f"ids: not in the index: {unknown[:5]}")
        if not wanted:
            return 0
        labels = np.array([self._labels[i] for i in wanted], np.int64)
        self._remove(labels)
        for i, label in zip(wanted, labels.tolist(), strict=True):
            del self._labels[i]
            self._label_ids[label] = None
        self._live[labels] = False
        dead = len(self._label_ids) - len(self)
        if dead > self.compact_fraction * len(self._label_ids):
            self.compact()
        return len(wanted)

    def compact(self) -> None:
        """Drop tombstones: the backend rebuilds without them and labels are renumbered in
        insertion order. Called by :meth:`remove` past ``compact_fraction``."""
        if len(self) == len(self._label_ids):
            return
        keep = self._live.copy()
        self._compact(keep)
        self._label_ids = [i for i in self._label_ids if i is not None]
        self._labels = {i: n for n, i in enumerate(self._label_ids) if i is not None}
        self._live = np.ones(len(self._label_ids), bool)

    # ---- search --------------------------------------------------------------------------------
    def search(self, queries: Any, k: int = 10) -> tuple[list[list[str]], FloatArray]:
        """Top-k ids and cosine scores (float32 (m, k'), descending, k' = min(k, len(self)))
        for each of (m, dim) queries (or one (dim,) query: m = 1)."""
        labels, scores = self._search_labels(queries, k)
        names = self._label_ids
        return [[names[j] or "" for j in row] for row in labels.tolist()], scores

    def _search_labels(self, queries: Any, k: int) -> tuple[IntArray, FloatArray]:
        if not len(self):
            raise ValueError("search: the index is empty")
        k = positive_int("k", k)
        q = unit_rows(queries, self.dim, "queries")  # (m, dim)
        labels, scores = self._search(q, min(k, len(self)))
        labels, scores = topk_by_score_then_label(labels, scores, labels.shape[1])
        if (labels < 0).any():  # a backend bug, not bad input: never hand out a wrong id
            raise RuntimeError(f"{self.backend} index returned fewer than k results")
        return labels, scores.astype(np.float32, copy=False)

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Save into `directory` (created; or replacing an index there) atomically: a crash
        leaves the previous index or this one. See mmfast/index/_files.py for the layout."""
        with atomic_directory(directory) as tmp:
            files = self._write(tmp)
            write_json(tmp / "ids.json", self._label_ids)
            manifest = {
                "format": INDEX_FORMAT,
                "backend": self.backend,
                "dim": self.dim,
                "count": len(self),
                "labels": len(self._label_ids),
                "params": self.params,
                "files": files,
                "metadata": self.metadata,
            }
            write_json(tmp / "index.json", manifest)

    def _restore_ids(self, ids: list[str | None]) -> None:
        self._label_ids = ids
        self._labels = {i: n for n, i in enumerate(ids) if i is not None}
        self._live = np.array([i is not None for i in ids], bool)

    @classmethod
    def _check_backend(cls: type[T], directory: Path, backend: str) -> None:
        if backend != cls.backend:
            raise ValueError(
                f"{directory}: a {backend} index, not {cls.backend} (mmfast.index.open_index "
                "opens any backend)"
            )

    # ---- what a backend implements --------------------------------------------------------------
    @property
    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The backend's parameters as saved in index.json (JSON values)."""

    @abstractmethod
    def _add(self, e: FloatArray, labels: IntArray) -> None:
        """Store unit rows e (n, dim) under new consecutive labels."""

    @abstractmethod
    def _remove(self, labels: IntArray) -> None:
        """Stop returning `labels` (they are still counted until :meth:`_compact`)."""

    @abstractmethod
    def _compact(self, keep: npt.NDArray[np.bool_]) -> None:
        """Rebuild with the labels where `keep` is true, renumbered 0.. in order."""

    @abstractmethod
    def _search(self, q: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        """(m, k) labels and cosine scores of unit queries q (m, dim); 1 <= k <= len(self)."""

    @abstractmethod
    def _write(self, directory: Path) -> dict[str, dict[str, Any]]:
        """Write the vectors into `directory`; return index.json's "files" records."""

    @classmethod
    @abstractmethod
    def load(cls: type[T], directory: str | Path, *, mmap: bool = True) -> T:
        """An index saved by :meth:`save`; ValueError naming the directory if it is missing,
        corrupt, of another backend or a newer format; OSError if a file cannot be read."""
