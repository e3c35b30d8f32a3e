"""Unit vectors in rows: input checks, a growable store that may start memory-mapped, and the
exact top-k scan over it (numpy's BLAS sgemm).

Cosine similarity is the dot product of unit vectors, so every backend normalises on the way
in and compares with inner products.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["FloatArray", "RowStore", "exact_topk", "topk_by_score_then_label", "unit_rows"]

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
# A saved embedding's norm may differ from 1 by float32 rounding (a few ulp over d terms);
# anything further was not written by save().
UNIT_TOLERANCE = 1e-3
_CHECK_ROWS = 1 << 16  # rows per chunk when validating a memory-mapped file (32 MiB at d=128)
_SCORE_BUDGET = 1 << 24  # floats of an (m, n) score block in the exact scan (64 MiB)


def unit_rows(x: Any, dim: int, name: str) -> FloatArray:
    """`x` ((n, dim) or (dim,)) as float32 unit rows; ValueError naming `name` for a wrong
    shape, NaN/inf or an all-zero row."""
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
    out: FloatArray = np.ascontiguousarray(a / norms, dtype=np.float32)
    return out


def check_unit_file(rows: np.ndarray, where: str) -> None:
    """Validate saved rows chunk by chunk: a memory-mapped file is read once, never whole."""
    for start in range(0, len(rows), _CHECK_ROWS):
        chunk = np.asarray(rows[start : start + _CHECK_ROWS])
        if not np.isfinite(chunk).all():
            raise ValueError(f"{where}: corrupt index (embeddings contain NaN or inf)")
        norms = np.linalg.norm(chunk, axis=1)
        if np.abs(norms - 1).max() > UNIT_TOLERANCE:
            raise ValueError(f"{where}: corrupt index (embeddings are not unit vectors)")


class RowStore:
    """(n, dim) float32 unit rows in insertion order: a read-only base (a memory-mapped file, or
    an array) followed by an in-memory tail that grows by doubling. Adding after a memory-mapped
    load copies nothing and never writes to the file; removing rows compacts into memory."""

    def __init__(self, dim: int, base: FloatArray | None = None) -> None:
        self.dim = dim
        self._base: FloatArray = np.zeros((0, dim), np.float32) if base is None else base
        self._tail: FloatArray = np.zeros((0, dim), np.float32)  # (capacity, dim)
        self._n_tail = 0

    def __len__(self) -> int:
        return len(self._base) + self._n_tail

    @property
    def mapped(self) -> bool:
        return isinstance(self._base, np.memmap) and len(self._base) > 0

    def parts(self) -> list[FloatArray]:
        """The rows as at most two contiguous blocks, in order (views, no copy)."""
        return [p for p in (np.asarray(self._base), self._tail[: self._n_tail]) if len(p)]

    def append(self, rows: FloatArray) -> None:
        need = self._n_tail + len(rows)
        if need > len(self._tail):
            grown = np.empty((max(need, 2 * len(self._tail), 64), self.dim), np.float32)
            grown[: self._n_tail] = self._tail[: self._n_tail]
            self._tail = grown
        self._tail[self._n_tail : need] = rows
        self._n_tail = need

    def rows(self, labels: IntArray) -> FloatArray:
        """Rows at `labels` (any shape, each in [0, n)) -> labels.shape + (dim,)."""
        nb = len(self._base)
        out: FloatArray = np.empty((*labels.shape, self.dim), np.float32)
        in_base = labels < nb
        out[in_base] = self._base[labels[in_base]]
        out[~in_base] = self._tail[labels[~in_base] - nb]
        return out

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep the rows where `mask` is true (in order), in memory."""
        kept = [p[m] for p, m in zip(self.parts(), self._split(mask), strict=True)]
        self._base = np.concatenate(kept) if kept else np.zeros((0, self.dim), np.float32)
        self._tail, self._n_tail = np.zeros((0, self.dim), np.float32), 0

    def _split(self, mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.bool_]]:
        nb = len(self._base)
        return [m for m in (mask[:nb], mask[nb:]) if len(m)]

    def write(self, path: Path) -> None:
        """Save as .npy (float32, (n, dim)), block by block: no whole copy in memory."""
        out = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float32, shape=(len(self), self.dim)
        )
        at = 0
        for p in self.parts():
            out[at : at + len(p)] = p
            at += len(p)
        out.flush()
        del out

    @classmethod
    def load(cls, path: Path, n: int, dim: int, *, mmap: bool, where: str) -> RowStore:
        """Rows saved by :meth:`write`, checked (shape, dtype, finite, unit norm); ValueError
        naming `where` otherwise. Memory-mapped read-only if `mmap`, else read into memory."""
        try:
            # memory-mapped: a header claiming billions of rows fails (the file is shorter) or
            # is refused by the shape check below before anything is read
            emb = np.load(path, allow_pickle=False, mmap_mode="r")
        except FileNotFoundError as e:
            raise ValueError(f"{where}: not an index directory ({e.filename} missing)") from e
        except (ValueError, EOFError) as e:
            raise ValueError(f"{where}: corrupt index ({e})") from e
        if emb.dtype != np.float32 or emb.shape != (n, dim):
            raise ValueError(f"{where}: embeddings {emb.shape} do not match {n} ids x {dim}")
        check_unit_file(emb, where)
        base = emb if mmap else np.array(emb)
        return cls(dim, base if n else None)


def topk_by_score_then_label(
    labels: IntArray, scores: FloatArray, k: int
) -> tuple[IntArray, FloatArray]:
    """The first k of each row of (m, c) candidates ordered by score descending, then label
    ascending (insertion order breaks ties); a missing candidate (score -inf) sorts last."""
    order = np.lexsort((labels, -scores), axis=1)[:, :k]
    return np.take_along_axis(labels, order, 1), np.take_along_axis(scores, order, 1)


def exact_topk(
    q: FloatArray, store: RowStore, k: int, live: npt.NDArray[np.bool_] | None = None
) -> tuple[IntArray, FloatArray]:
    """Exact top-k (labels (m, k), scores (m, k)) of unit queries q (m, dim) over the store,
    skipping rows where `live` is false. k <= live rows. Query blocks keep the (m, n) score
    matrix under _SCORE_BUDGET floats."""
    n = len(store)
    labels: IntArray = np.empty((len(q), k), np.int64)
    scores: FloatArray = np.empty((len(q), k), np.float32)
    step = max(1, _SCORE_BUDGET // max(n, 1))
    parts = store.parts()
    for s in range(0, len(q), step):
        qb = q[s : s + step]
        if len(parts) == 1:
            sc = qb @ parts[0].T  # (mb, n)
        else:
            sc = np.concatenate([qb @ p.T for p in parts], axis=1)
        if live is not None:
            sc[:, ~live] = -np.inf
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k] if k < n else None
        if part is None:
            part = np.tile(np.arange(n), (len(qb), 1))
        top = np.take_along_axis(sc, part, 1)
        labels[s : s + step], scores[s : s + step] = topk_by_score_then_label(part, top, k)
    return labels, scores
