"""Vector indexes for retrieval: cosine similarity over L2-normalised embeddings, torch-free.

Backends behind one interface (:class:`VectorIndex`): :class:`ExactIndex` (numpy; also called
``EmbeddingIndex``), :class:`HNSWIndex` and :class:`IVFPQIndex` (faiss, imported only when one
is made or opened: ``pip install 'mmfast[index]'``). :func:`make_index` picks one,
:func:`open_index` opens any saved one. Layout on disk: mmfast/index/_files.py.
"""

from __future__ import annotations

from ._base import VectorIndex
from .exact import EmbeddingIndex, ExactIndex
from .factory import AUTO_EXACT_MAX, make_index, open_index
from .hnsw import HNSWIndex
from .ivfpq import IVFPQIndex

__all__ = [
    "AUTO_EXACT_MAX",
    "EmbeddingIndex",
    "ExactIndex",
    "HNSWIndex",
    "IVFPQIndex",
    "VectorIndex",
    "make_index",
    "open_index",
]
