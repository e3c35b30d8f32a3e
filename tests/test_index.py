"""EmbeddingIndex: exact cosine search, save/load, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from mmfast.index import EmbeddingIndex


def brute_force(emb, q, k):
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    qq = q / np.linalg.norm(q, axis=1, keepdims=True)
    s = qq.astype(np.float64) @ e.astype(np.float64).T
    return np.argsort(-s, axis=1, kind="stable")[:, :k], np.sort(s, axis=1)[:, ::-1][:, :k]


def test_search_matches_brute_force_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1000, 32)).astype(np.float32)
    idx = EmbeddingIndex(32, {"model": "test"})
    idx.add(emb[:600], ids=[f"img{i}" for i in range(600)])
    idx.add(emb[600:], ids=[f"img{i}" for i in range(600, 1000)])
    q = rng.standard_normal((5, 32)).astype(np.float32)
    ids, scores = idx.search(q, k=10)
    want, want_s = brute_force(emb, q, 10)
    assert ids == [[f"img{j}" for j in row] for row in want]
    np.testing.assert_allclose(scores, want_s, atol=1e-5)
    idx.save(tmp_path / "ix")
    back = EmbeddingIndex.load(tmp_path / "ix")
    assert len(back) == 1000 and back.metadata == {"model": "test"}
    assert back.search(q, k=10)[0] == ids
    assert idx.search(q[0], k=5000)[1].shape == (1, 1000)  # k clamps to the index size


def test_bad_inputs(tmp_path):
    idx = EmbeddingIndex(4)
    with pytest.raises(ValueError, match="search: the index is empty"):
        idx.search(np.ones(4))
    with pytest.raises(ValueError, match=r"embeddings: expected shape \(n, 4\)"):
        idx.add(np.ones((2, 3)))
    with pytest.raises(ValueError, match="embeddings: contains NaN"):
        idx.add(np.array([[np.nan, 1, 1, 1]]))
    with pytest.raises(ValueError, match="all-zero vector"):
        idx.add(np.zeros((1, 4)))
    idx.add(np.eye(4), ids=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="ids: already in the index"):
        idx.add(np.eye(4)[:1], ids=["a"])
    with pytest.raises(ValueError, match="ids: 1 ids for 2"):
        idx.add(np.eye(4)[:2], ids=["x"])
    with pytest.raises(ValueError, match="k: expected a positive int"):
        idx.search(np.ones(4), k=0)
    with pytest.raises(ValueError, match="not an index directory"):
        EmbeddingIndex.load(tmp_path / "nothing")
    with pytest.raises(ValueError, match="dim: expected a positive int"):
        EmbeddingIndex(0)
