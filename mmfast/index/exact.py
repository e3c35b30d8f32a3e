"""Exact nearest-neighbour search over L2-normalised embeddings (cosine similarity): numpy only.

Built for text-to-image retrieval: image embeddings are added once, text queries search them.
Scores are dot products of unit vectors (numpy's BLAS sgemm), top-k by partial sort, ties to
the earlier-added row. A query reads every stored vector: at 512-d this is the right index up
to ~50k vectors (a few ms a query on 2 cores, benchmarks/README.md "Vector index"); past that,
an approximate backend (mmfast.index.make_index).

Saved as ``embeddings.npy`` (float32, (n, d)), ``ids.json``, ``index.json``. Loading checks
what saving guarantees (unique string ids, finite unit-norm rows of the stated dim, one per id)
chunk by chunk on the memory-mapped file, so a corrupt or edited index is refused instead of
returning NaN or unnormalised scores, and a large one is not read into memory to be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ._base import VectorIndex
from ._files import EMBEDDINGS, read_ids, read_manifest
from ._vectors import FloatArray, IntArray, RowStore, exact_topk

__all__ = ["EmbeddingIndex", "ExactIndex"]


class ExactIndex(VectorIndex):
    """Exact cosine index: every query is compared with every stored embedding.

    Removal compacts at once (rows are labels); adding after a memory-mapped load appends in
    memory and leaves the file as it was.
    """

    backend = "exact"
    compact_fraction = 0.0  # rows are renumbered at every remove: no tombstones

    def __init__(self, dim: int, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(dim, metadata)
        self._store = RowStore(self.dim)

    @property
    def params(self) -> dict[str, Any]:
        return {}

    def id_at(self, row: int) -> str:
        """The id of the row-th embedding (insertion order, removed ones skipped)."""
        label = self._label_ids[int(row)]
        assert label is not None  # exact compacts at every remove
        return label

    def search_rows(self, queries: Any, k: int = 10) -> tuple[IntArray, FloatArray]:
        """Like :meth:`search`, with row numbers (insertion order) instead of ids."""
        return self._search_labels(queries, k)

    def _add(self, e: FloatArray, labels: IntArray) -> None:
        self._store.append(e)

    def _remove(self, labels: IntArray) -> None:
        pass  # compacted right after (compact_fraction = 0)

    def _compact(self, keep: npt.NDArray[np.bool_]) -> None:
        self._store.keep(keep)

    def _search(self, q: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        return exact_topk(q, self._store, k)

    def _write(self, directory: Path) -> dict[str, dict[str, Any]]:
        self._store.write(directory / EMBEDDINGS)
        return {}  # contents are validated on load (finite unit rows): no digest needed

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> ExactIndex:
        """An index saved by :meth:`save`, its embeddings memory-mapped (read-only; pages come
        in as searches touch them) unless `mmap` is False."""
        d = Path(directory)
        m = read_manifest(d)
        cls._check_backend(d, m.backend)
        ids = read_ids(d, m, tombstones=False)
        index = cls(m.dim, m.metadata)
        index._store = RowStore.load(d / EMBEDDINGS, len(ids), m.dim, mmap=mmap, where=str(d))
        index._restore_ids(ids)
        return index


# The name the first version had; the retriever and the CLI use it.
EmbeddingIndex = ExactIndex
