"""Approximate cosine search with a FAISS inverted file of product-quantised codes
(IndexIVFPQ, inner product on unit vectors), re-ranked exactly.

A query scans the ``nprobe`` nearest of ``nlist`` k-means cells, scores their PQ codes
(``m`` sub-quantizers of ``nbits`` bits: m bytes a vector at nbits = 8) and keeps the best
``refine * k`` candidates; those are re-scored against the exact stored vectors
(``embeddings.npy``, memory-mapped after a load, so only the candidates' rows are read). The
returned scores are therefore exact cosines; only the candidate set is approximate.

Defaults (nlist 1024, m = dim / 8, nprobe 32, refine 100) are from benchmarks/README.md
"Vector index": at 1M x 512 (clustered) recall@10 0.968 at a 1.9 ms p50 on 2 cores. PQ's
ranking is too coarse to pick the top 10 among near-ties (refine 10: recall 0.73 at any
nprobe), hence the large pool; the re-rank reads refine * k rows (2 MB a query at k = 10,
512-d), so its cost grows with k.

Training: the coarse quantizer and the PQ codebooks are k-means, which need enough vectors
(faiss warns below 39 per centroid): training happens inside the first :meth:`add` that brings
the index to ``39 * max(nlist, 2**nbits)`` vectors, on a sample of at most ``train_size`` of
them. Until then the index is exact (every query scans the stored vectors) and
:attr:`trained` is False: never an answer from an untrained quantizer.

Removal: IVF lists support deletion (faiss ``remove_ids``); the stored exact vector stays as a
tombstone until a quarter of the rows are dead, then the store is compacted and the codes
re-added (no retraining).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._checks import positive_int
from ._base import VectorIndex
from ._faiss import faiss, owned, read_checked, threads, write_recorded
from ._files import EMBEDDINGS, FAISS_FILE, read_ids, read_manifest
from ._vectors import FloatArray, IntArray, RowStore, exact_topk, topk_by_score_then_label

__all__ = ["IVFPQIndex"]

_BLOCK = 1 << 15  # vectors per faiss add (bounds the gathered copy); queries per search block
_MIN_POINTS = 39  # per centroid: below this faiss's k-means warns and clusters poorly


def default_m(dim: int) -> int:
    """Sub-quantizers: about 8 dimensions each (m bytes per code), a divisor of dim."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


class IVFPQIndex(VectorIndex):
    """IVF-PQ cosine index (faiss) with exact re-ranking. ``threads``: OpenMP threads for
    training, adding and searching (None: all cores); a run-time setting, not saved."""

    backend = "ivfpq"

    def __init__(
        self,
        dim: int,
        metadata: dict[str, Any] | None = None,
        *,
        nlist: int = 1024,
        m: int | None = None,
        nbits: int = 8,
        nprobe: int = 32,
        refine: int = 100,
        train_size: int | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(dim, metadata)
        self.nlist = positive_int("nlist", nlist, at_most=1 << 20)
        self.m = default_m(self.dim) if m is None else positive_int("m", m)
        if self.dim % self.m:
            raise ValueError(f"m: {self.m} sub-quantizers do not divide dim {self.dim}")
        self.nbits = positive_int("nbits", nbits, at_most=16)
        self.nprobe = positive_int("nprobe", nprobe)
        self.refine = positive_int("refine", refine)
        self.train_min = _MIN_POINTS * max(self.nlist, 1 << self.nbits)
        default_train = 64 * max(self.nlist, 1 << self.nbits)
        self.train_size = positive_int("train_size", train_size or default_train)
        if self.train_size < self.train_min:
            raise ValueError(f"train_size: at least {self.train_min}, got {self.train_size}")
        self.threads = None if threads is None else positive_int("threads", threads)
        self._store = RowStore(self.dim)  # exact unit vectors by label, for re-ranking
        self._index = self._empty()
        self._mapped = False  # a memory-mapped faiss index: copy before changing it

    @property
    def params(self) -> dict[str, Any]:
        return {
            "nlist": self.nlist,
            "m": self.m,
            "nbits": self.nbits,
            "nprobe": self.nprobe,
            "refine": self.refine,
            "train_size": self.train_size,
        }

    @property
    def trained(self) -> bool:
        """Whether the quantizers are trained; until then searches are exact scans."""
        return bool(self._index.is_trained)

    def _empty(self) -> Any:
        f = faiss()
        quantizer = f.IndexFlatIP(self.dim)  # the wrapper keeps it alive with the index
        ivf = f.IndexIVFPQ(
            quantizer, self.dim, self.nlist, self.m, self.nbits, f.METRIC_INNER_PRODUCT
        )
        return ivf

    def _writable(self) -> Any:
        if self._mapped:
            self._index, self._mapped = owned(self._index), False
        return self._index

    def _add_codes(self, labels: IntArray) -> None:
        """Encode the stored rows `labels` into the lists, a block at a time. Explicit ids: after
        remove_ids faiss's ntotal no longer equals the next label."""
        index = self._writable()
        with threads(self.threads):
            for s in range(0, len(labels), _BLOCK):
                block = labels[s : s + _BLOCK]
                index.add_with_ids(self._store.rows(block), block)

    def _add(self, e: FloatArray, labels: IntArray) -> None:
        self._store.append(e)
        if self.trained:
            self._add_codes(labels)
            return
        live = np.flatnonzero(np.concatenate([self._live, np.ones(len(e), bool)]))
        if len(live) >= self.train_min:
            self._train(live)

    def _train(self, live: IntArray) -> None:
        rng = np.random.default_rng(0)  # the same sample, hence the same index, every time
        sample = (
            live
            if len(live) <= self.train_size
            else rng.choice(live, self.train_size, replace=False)
        )
        index = self._writable()
        with threads(self.threads):
            index.train(self._store.rows(np.sort(sample)))
        self._add_codes(live)

    def _remove(self, labels: IntArray) -> None:
        if self.trained:
            self._writable().remove_ids(labels)

    def _compact(self, keep: npt.NDArray[np.bool_]) -> None:
        self._store.keep(keep)
        if self.trained:
            self._writable().reset()  # empties the lists, keeps the trained quantizers
            self._add_codes(np.arange(len(self._store), dtype=np.int64))

    def _search(self, q: FloatArray, k: int) -> tuple[IntArray, FloatArray]:
        if not self.trained:
            dead = len(self) < len(self._label_ids)
            return exact_topk(q, self._store, k, live=self._live if dead else None)
        labels: IntArray = np.empty((len(q), k), np.int64)
        scores: FloatArray = np.empty((len(q), k), np.float32)
        for s in range(0, len(q), _BLOCK // 64):
            rows = np.arange(s, min(s + _BLOCK // 64, len(q)))
            self._search_block(q, k, rows, labels, scores)
        return labels, scores

    def _search_block(
        self, q: FloatArray, k: int, rows: IntArray, labels: IntArray, scores: FloatArray
    ) -> None:
        f = faiss()
        pool = min(self.refine * k, len(self))  # candidates re-ranked exactly
        nprobe = min(self.nprobe, self.nlist)
        while len(rows):
            params = f.SearchParametersIVF()
            params.nprobe = nprobe
            with threads(self.threads):
                _, cand = self._index.search(q[rows], pool, params=params)  # (r, pool)
            vec = self._store.rows(np.maximum(cand, 0))  # (r, pool, dim)
            exact = np.einsum("rpd,rd->rp", vec, q[rows])  # (r, pool) cosines
            exact[cand < 0] = -np.inf  # fewer than `pool` vectors in the probed cells
            top, top_s = topk_by_score_then_label(cand, exact, k)
            # a query whose probed cells held fewer than k vectors probes more (all cells
            # at the end, which hold every live vector: k <= len(self) are found)
            done = (top >= 0).all(axis=1) | (nprobe >= self.nlist)
            labels[rows[done]], scores[rows[done]] = top[done], top_s[done]
            rows, nprobe = rows[~done], min(self.nlist, nprobe * 4)

    def _write(self, directory: Path) -> dict[str, dict[str, Any]]:
        self._store.write(directory / EMBEDDINGS)
        return {FAISS_FILE: write_recorded(self._index, directory / FAISS_FILE)}

    @classmethod
    def load(
        cls, directory: str | Path, *, mmap: bool = True, threads: int | None = None
    ) -> IVFPQIndex:
        """An index saved by :meth:`save`; with `mmap` the exact vectors and the PQ codes are
        memory-mapped (read-only) until the first change."""
        d = Path(directory)
        m = read_manifest(d)
        cls._check_backend(d, m.backend)
        ids = read_ids(d, m, tombstones=True)
        try:
            index = cls(m.dim, m.metadata, **m.params, threads=threads)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{d}: corrupt index (params: {e})") from e
        index._store = RowStore.load(d / EMBEDDINGS, len(ids), m.dim, mmap=mmap, where=str(d))
        live = sum(i is not None for i in ids)
        ivf = read_checked(d, FAISS_FILE, m, "IndexIVFPQ", None, mmap=mmap)
        if ivf.nlist != index.nlist or ivf.pq.M != index.m or ivf.pq.nbits != index.nbits:
            raise ValueError(f"{d}: corrupt index ({FAISS_FILE} does not match index.json params)")
        if ivf.ntotal != (live if ivf.is_trained else 0):
            raise ValueError(
                f"{d}: corrupt index ({FAISS_FILE} holds {ivf.ntotal} codes for {live} ids)"
            )
        index._index, index._mapped = ivf, mmap
        index._restore_ids(ids)
        return index
