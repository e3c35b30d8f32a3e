"""Choosing a backend: :func:`make_index` for a new index, :func:`open_index` for a saved one.

``backend="auto"`` picks the exact index while it is fast enough and HNSW past that. From
benchmarks/README.md "Vector index" (512-d, clustered, 2 cores):
- an exact query reads every stored vector (n * dim * 4 bytes, memory-bound: ~10k vectors of
  512-d a millisecond on one core), so it crosses the 5 ms a query target at about 50k
  vectors (AUTO_EXACT_MAX, scaled by 512 / dim);
- at 1M, HNSW (ef_construction 128, ef_search 128) reached recall@10 0.991 at a 0.47 ms p50,
  IVF-PQ with exact re-ranking 0.968 at 1.9 ms; with queries shifted off the data (a
  modality gap, as text queries against image embeddings; 200k) HNSW kept 0.996 where IVF-PQ
  fell to 0.91. HNSW's costs: a 7.7-minute build at 1M on 2 cores (IVF-PQ: 1.2 minutes) and
  every vector in memory (IVF-PQ's can stay memory-mapped on disk): choose "ivfpq" where
  those matter.
Without ``expected_size`` auto picks exact: it is always right, only slower, and needs no
faiss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._checks import positive_int
from ._base import VectorIndex
from ._files import read_manifest
from .exact import ExactIndex
from .hnsw import HNSWIndex
from .ivfpq import IVFPQIndex

__all__ = ["AUTO_EXACT_MAX", "BACKEND_CLASSES", "make_index", "open_index"]

# vectors (at 512-d; scaled by 512 / dim for other dims: the exact scan is memory-bound)
AUTO_EXACT_MAX = 50_000
BACKEND_CLASSES: dict[str, type[VectorIndex]] = {
    "exact": ExactIndex,
    "hnsw": HNSWIndex,
    "ivfpq": IVFPQIndex,
}


def auto_backend(dim: int, expected_size: int | None) -> str:
    """The backend "auto" means for `expected_size` vectors of `dim`."""
    if expected_size is None or expected_size * dim <= AUTO_EXACT_MAX * 512:
        return "exact"
    return "hnsw"


def make_index(
    dim: int,
    backend: str = "auto",
    *,
    expected_size: int | None = None,
    metadata: dict[str, Any] | None = None,
    **params: Any,
) -> VectorIndex:
    """A new, empty index of `dim`-dimensional embeddings.

    backend: "exact" (numpy, no extra dependency), "hnsw" or "ivfpq" (faiss: the `index`
    extra), or "auto" (see the module docstring; needs `expected_size`, the number of vectors
    you expect, to pick anything but exact). params go to the backend's class (HNSWIndex: M,
    ef_construction, ef_search, threads; IVFPQIndex: nlist, m, nbits, nprobe, refine,
    train_size, threads); an IVF-PQ index without nlist gets one sized from expected_size.
    """
    dim = positive_int("dim", dim)
    if expected_size is not None:
        expected_size = positive_int("expected_size", expected_size)
    if backend == "auto":
        backend = auto_backend(dim, expected_size)
    if backend not in BACKEND_CLASSES:
        raise ValueError(
            f"backend: expected one of auto, {', '.join(BACKEND_CLASSES)}; got {backend!r}"
        )
    if backend == "exact":
        if params:
            raise ValueError(f"the exact backend takes no parameters, got {sorted(params)}")
        return ExactIndex(dim, metadata)
    if backend == "ivfpq" and "nlist" not in params and expected_size is not None:
        params["nlist"] = suggested_nlist(expected_size)
    cls = BACKEND_CLASSES[backend]
    index: VectorIndex = cls(dim, metadata, **params)
    return index


def suggested_nlist(n: int) -> int:
    """IVF cells for n vectors: ~sqrt(n) rounded to a power of two, 64..65536 (about a
    thousand vectors a cell at 1M)."""
    p = 64
    while p < 65536 and p * p < n:
        p *= 2
    return p


def open_index(directory: str | Path, *, mmap: bool = True) -> VectorIndex:
    """The index saved in `directory`, whatever its backend (index.json says which)."""
    backend = read_manifest(directory).backend
    return BACKEND_CLASSES[backend].load(directory, mmap=mmap)
