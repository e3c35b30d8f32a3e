"""EmbeddingIndex: exact cosine search, save/load, bad input."""

from __future__ import annotations

import json

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


def _saved(root, emb=None, ids=None, meta=None):
    """A saved 3 x 4 index, with any of its files replaced (a corrupt or edited index)."""
    idx = EmbeddingIndex(4, {"model": "test"})
    idx.add(np.eye(4)[:3], ids=["a", "b", "c"])
    idx.save(root)
    if emb is not None:
        np.save(root / "embeddings.npy", np.asarray(emb, np.float32))
    if ids is not None:
        (root / "ids.json").write_text(json.dumps(ids))
    if meta is not None:
        (root / "index.json").write_text(json.dumps(meta))
    return root


UNIT = np.eye(4)[:3]
CORRUPT = [  # id, replaced files, message; each loaded (and searched, silently wrong) before
    ("NaN embedding", {"emb": np.where(UNIT == 1, np.nan, UNIT)}, "embeddings contain NaN"),
    ("non-unit embedding", {"emb": UNIT * [[1], [100], [0.01]]}, "are not unit vectors"),
    ("all-zero embedding", {"emb": np.eye(4)[:3] * [[1], [1], [0]]}, "are not unit vectors"),
    ("repeated id", {"ids": ["a", "a", "b"]}, r"ids\.json repeats an id"),
    ("ids not strings", {"ids": [1, 2, 3]}, r"ids\.json is not a list of strings"),
    ("ids an object", {"ids": {"a": 1, "b": 2, "c": 3}}, r"ids\.json is not a list of strings"),
    ("count disagrees", {"meta": {"format": 1, "dim": 4, "count": 5}}, "5 in index.json, 3 ids"),
    ("index.json a list", {"meta": []}, r"index\.json is not an object"),  # AttributeError
    ("no dim", {"meta": {"format": 1}}, "needs an int format and dim"),  # KeyError
    ("format a string", {"meta": {"format": "1", "dim": 4}}, "int format and dim"),  # TypeError
    ("dim true", {"meta": {"format": 1, "dim": True}}, "needs an int format and dim"),
]


@pytest.mark.parametrize(
    ("files", "message"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT]
)
def test_a_corrupt_index_is_refused_naming_the_directory(files, message, tmp_path):
    d = _saved(tmp_path / "ix", **files)
    with pytest.raises(ValueError, match=message) as e:
        EmbeddingIndex.load(d)
    assert str(e.value).startswith(f"{d}: ")


def test_an_unreadable_index_file_is_an_oserror(tmp_path):
    d = _saved(tmp_path / "ix")
    (d / "embeddings.npy").unlink()
    (d / "embeddings.npy").mkdir()
    with pytest.raises(IsADirectoryError):
        EmbeddingIndex.load(d)
    with pytest.raises(ValueError, match="not an index directory"):
        EmbeddingIndex.load(d / "ids.json")  # a file, not a directory


def test_k_must_be_an_int_not_a_bool(tmp_path):
    idx = EmbeddingIndex.load(_saved(tmp_path / "ix"))
    with pytest.raises(ValueError, match="k: expected a positive int, got True"):
        idx.search(np.ones(4), k=True)
    assert len(idx.search(np.ones(4), k=np.int64(2))[0][0]) == 2  # from an argmax, say
