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


# ---- the backend interface on the exact index (tests/test_index_faiss.py: HNSW, IVF-PQ) ----------
def _digest(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_remove_equals_an_index_built_without_them():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((500, 16)).astype(np.float32)
    emb[7] = emb[3]  # a tie: broken by insertion order before and after removal
    ids = [f"ü{i}" for i in range(500)]
    idx = EmbeddingIndex(16)
    idx.add(emb, ids)
    gone = ids[::3]
    assert idx.remove(gone) == len(gone)
    assert len(idx) == 500 - len(gone) and ids[0] not in idx and ids[1] in idx
    rest = [i for i in range(500) if i % 3]
    want = EmbeddingIndex(16)
    want.add(emb[rest], [ids[i] for i in rest])
    q = np.concatenate([rng.standard_normal((5, 16)), emb[3:4]]).astype(np.float32)
    got_ids, got_s = idx.search(q, k=20)
    want_ids, want_s = want.search(q, k=20)
    assert got_ids == want_ids and idx.ids == want.ids
    np.testing.assert_array_equal(got_s, want_s)
    rows, _ = idx.search_rows(q, k=20)
    assert [[idx.id_at(r) for r in row] for row in rows.tolist()] == got_ids
    with pytest.raises(ValueError, match=r"ids: not in the index: \['ü0'\]"):
        idx.remove(["ü1", "ü0"])  # ü0 is gone: nothing is removed
    assert "ü1" in idx
    idx.add(emb[:2])  # default ids skip the ones in use
    assert len(set(idx.ids)) == len(idx)
    with pytest.raises(ValueError, match="ids: expected a sequence of ids, got the single string"):
        idx.remove("ü1")  # not ["ü", "1"]


def test_add_and_remove_after_a_memory_mapped_load_leave_the_file_alone(tmp_path):
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((300, 8)).astype(np.float32)
    idx = EmbeddingIndex(8, {"model": "m"})
    idx.add(emb, [f"a{i}" for i in range(300)])
    idx.save(tmp_path / "ix")
    before = _digest(tmp_path / "ix")
    back = EmbeddingIndex.load(tmp_path / "ix")  # mmap by default
    assert back._store.mapped
    back.add(emb[:2] * -1, ["x", "y"])
    assert back.search(-emb[0], k=1)[0] == [["x"]]
    back.remove(["a5", "x"])
    assert len(back) == 300 and _digest(tmp_path / "ix") == before
    in_memory = EmbeddingIndex.load(tmp_path / "ix", mmap=False)
    assert not in_memory._store.mapped
    q = rng.standard_normal((4, 8)).astype(np.float32)
    assert in_memory.search(q, k=5)[0] == idx.search(q, k=5)[0]


def test_unicode_ids_and_an_empty_index_round_trip(tmp_path):
    idx = EmbeddingIndex(3, {"名前": "模型"})
    idx.save(tmp_path / "empty")
    assert len(EmbeddingIndex.load(tmp_path / "empty")) == 0
    ids = ["图像 1", "ä/b\\c", '"quoted"', "🙂", ""]
    idx.add(np.eye(3)[[0, 1, 2, 0, 1]] + 0.1, ids)
    idx.save(tmp_path / "ix")
    back = EmbeddingIndex.load(tmp_path / "ix")
    assert back.ids == ids and back.metadata == {"名前": "模型"} and "🙂" in back


def test_format_1_indexes_still_load(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    np.save(d / "embeddings.npy", np.eye(3, dtype=np.float32))
    (d / "ids.json").write_text(json.dumps(["a", "b", "c"]))
    (d / "index.json").write_text(json.dumps({"format": 1, "dim": 3, "count": 3, "bundle": "b/"}))
    back = EmbeddingIndex.load(d)
    assert back.metadata == {"bundle": "b/"} and back.search(np.eye(3)[1], k=1)[0] == [["b"]]
    back.save(d)  # rewritten as format 2
    assert json.loads((d / "index.json").read_text())["format"] == 2
    assert EmbeddingIndex.load(d).metadata == {"bundle": "b/"}


def test_save_is_atomic_and_keeps_files_that_are_not_the_index(tmp_path, monkeypatch):
    d = _saved(tmp_path / "ix")
    (d / "regions.npy").write_bytes(b"kept")
    before = _digest(d)
    idx = EmbeddingIndex(4)
    idx.add(np.eye(4), ids=["w", "x", "y", "z"])

    def crash(directory):
        (directory / "embeddings.npy").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(idx, "_write", crash)
    with pytest.raises(OSError, match="disk full"):
        idx.save(d)
    assert _digest(d) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ix"]
    monkeypatch.undo()
    idx.save(d)
    assert EmbeddingIndex.load(d).ids == ["w", "x", "y", "z"]
    assert (d / "regions.npy").read_bytes() == b"kept"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and not an index directory"):
        idx.save(tmp_path / "notes")


def test_factory_without_faiss(tmp_path):
    from mmfast.index import AUTO_EXACT_MAX, ExactIndex, make_index, open_index

    idx = make_index(4, expected_size=AUTO_EXACT_MAX)
    assert type(idx) is ExactIndex
    with pytest.raises(ValueError, match="the exact backend takes no parameters"):
        make_index(4, "exact", M=3)
    _saved(tmp_path / "ix")
    assert open_index(tmp_path / "ix").ids == ["a", "b", "c"]
