"""Approximate cosine search with a FAISS HNSW graph (IndexHNSWFlat, inner product on unit
vectors): the vectors stay exact, so returned scores are exact cosines; only the candidate
set is approximate (recall < 1).

Removal: faiss cannot delete from an HNSW graph. A removed label becomes a tombstone that the
search filters out (``SearchParametersHNSW.sel``, an IDSelectorBitmap of live labels): faiss
still walks through tombstones, so the graph stays connected and recall holds, but every
tombstone costs search time and memory; past ``compact_fraction`` (a quarter) of the labels
the graph is rebuilt from the stored vectors without them, inside that :meth:`remove` call,
which then costs as much as building the index (minutes at 1M x 512 on 2 cores).

Parameters (faiss names in brackets): ``M`` neighbours per node [M]; ``ef_construction``
candidate list while building [efConstruction]; ``ef_search`` candidate list while searching
[efSearch], raised to k when smaller. Higher ef_search: higher recall, slower queries
(benchmarks/README.md "Vector index" has the curve at 1M x 512).

Defaults (M 32, ef_construction 128, ef_search 128), measured at 1M x 512 clustered on 2
cores: recall@10 0.991 at a 0.47 ms p50; the build takes 7.7 minutes. faiss's own default
ef_construction (40) builds in 5.2 minutes a graph that stays under 0.9 recall at any
ef_search: on clustered data the build's candidate list must be wide enough to link clusters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._checks import positive_int
from ._base import VectorIndex
from ._faiss import faiss, owned, read_checked, threads, write_recorded
from ._files import FAISS_FILE, read_ids, read_manifest
from ._vectors import FloatArray, IntArray, RowStore, exact_topk

__all__ = ["HNSWIndex"]


class HNSWIndex(VectorIndex):
    """HNSW cosine index (faiss). ``threads``: OpenMP threads for build and search (None: all
    cores); a run-time setting, not saved."""

    backend = "hnsw"

    def __init__(
        self,
        dim: int,
        metadata: dict[str, Any] | None = None,
        *,
        M: int = 32,
        ef_construction: int = 128,
        ef_search: int = 128,
        threads: int | None = None,
    ) -> None:
        super().__init__(dim, metadata)
        self.M = positive_int("M", M, at_most=512)
        self.ef_construction = positive_int("ef_construction", ef_construction)
        self.ef_search = positive_int("ef_search", ef_search)
        self.threads = None if threads is None else positive_int("threads", threads)
        self._index = self._empty()
        self._mapped = False  # a memory-mapped faiss index: copy before changing it
        self._bitmap: npt.NDArray[np.uint8] | None = None  # packed live labels, for sel

    @property
    def params(self) -> dict[str, Any]:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _empty(self) -> Any:
        f = faiss()
        index = f.IndexHNSWFlat(self.dim, self.M, f.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _writable(self) -> Any:
        if self._mapped:
            self._index, self._mapped = owned(self._index), False
        return self._index

    def _add(self, e: FloatArray, labels: IntArray) -> None:
        index = self._writable()
        # faiss numbers vectors in add order; tombstones keep their numbers, so this holds
        assert index.ntotal == labels[0], (index.ntotal, labels[0])
        with threads(self.threads):
            index.add(e)

    def _remove(self, labels: IntArray) -> None:
        self._bitmap = None  # the selector is rebuilt from _live at the next search

    def _vectors(self) -> FloatArray:
        """All stored vectors, tombstones included: (ntotal, dim), a copy."""
        out: FloatArray = self._index.reconstruct_n(0, self._index.ntotal)
        return out

    def _compact(self, keep: npt.NDArray[np.bool_]) -> None:
        kept = self._vectors()[keep]
        self._index, self._mapped, self._bitmap = self._empty(), False, None
        with threads(self.threads):
            self._index.add(kept)

    def _search(self, q: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        f = faiss()
        params = f.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, k)  # fewer candidates than k cannot fill k
        sel = None
        if len(self) < len(self._label_ids):
            if self._bitmap is None:  # faiss reads bit i as byte i >> 3, bit i & 7
                self._bitmap = np.packbits(self._live, bitorder="little")
            sel = f.IDSelectorBitmap(len(self._live), f.swig_ptr(self._bitmap))
            params.sel = sel  # `sel` and the bitmap stay referenced until the search returns
        with threads(self.threads):
            scores, labels = self._index.search(q, k, params=params)  # (m, k) each
        short = (labels < 0).any(axis=1)
        if short.any():
            # the graph walk found fewer than k live vectors (many tombstones near the query,
            # or a tiny index): answer those queries exactly instead of with fewer results
            store = RowStore(self.dim, self._vectors())
            labels[short], scores[short] = exact_topk(q[short], store, k, live=self._live)
        return labels, scores

    def _write(self, directory: Path) -> dict[str, dict[str, Any]]:
        return {FAISS_FILE: write_recorded(self._index, directory / FAISS_FILE)}

    @classmethod
    def load(
        cls, directory: str | Path, *, mmap: bool = True, threads: int | None = None
    ) -> HNSWIndex:
        """An index saved by :meth:`save`; with `mmap` the vectors are memory-mapped from the
        file (IO_FLAG_MMAP_IFC; the graph is read into memory) until the first change."""
        d = Path(directory)
        m = read_manifest(d)
        cls._check_backend(d, m.backend)
        ids = read_ids(d, m, tombstones=True)
        try:
            index = cls(m.dim, m.metadata, **m.params, threads=threads)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{d}: corrupt index (params: {e})") from e
        index._index = read_checked(d, FAISS_FILE, m, "IndexHNSWFlat", len(ids), mmap=mmap)
        index._mapped = mmap
        index._restore_ids(ids)
        return index
