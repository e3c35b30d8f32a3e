"""The FAISS backends (HNSW, IVF-PQ) against the exact index: recall, exact scores, save/load
(memory-mapped), add after load, remove, and saved files that faiss must never be handed.

Data: 3000 clustered unit vectors (30 centres, d = 32, spread like image embeddings: points
closer to their own centre than to others, but a cluster is wide) and 100 held-out queries.

Recall bounds, from the parameters (measured here: 1.00 for both):
- HNSW, M = 16, ef_search = 64: the candidate list is 6x k and the graph has 3000 nodes, so the
  walk ends next to the true neighbours; 0.95 allows a miss in every other query's top 10.
- IVF-PQ, nlist = 32, nprobe = 8: a query reads a quarter of the data (the 8 cells nearest to
  it, which hold its neighbours: ~1 centre per cell), and the 100 best PQ candidates (refine
  10) are re-ranked exactly; 0.9 allows PQ (4 dims a byte at nbits 6) to push one true
  neighbour in ten out of the pool.
A label mix-up or a wrong metric drops recall to ~0.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")

from mmfast.index import (  # noqa: E402
    ExactIndex,
    HNSWIndex,
    IVFPQIndex,
    VectorIndex,
    make_index,
    open_index,
)

N, D, CENTRES = 3000, 32, 30
PARAMS = {
    "hnsw": {"M": 16, "ef_construction": 40, "ef_search": 64},
    "ivfpq": {"nlist": 32, "m": 8, "nbits": 6, "nprobe": 8, "refine": 10},
}
RECALL_BOUND = {"hnsw": 0.95, "ivfpq": 0.9}
IDS = [f"图像/{i:04d} ✓" for i in range(N)]  # not numbers, not ASCII


def _mixture(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.random.default_rng(0).standard_normal((CENTRES, D))  # the same centres for all
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, CENTRES, n)] + 0.6 * rng.standard_normal((n, D)) / np.sqrt(D)
    return x.astype(np.float32)


X, Q = _mixture(N, 1), _mixture(100, 2)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _build(backend: str, n: int = N) -> VectorIndex:
    index = make_index(D, backend, metadata={"model": "m"}, **PARAMS[backend])
    index.add(X[: n // 2], IDS[: n // 2])  # two adds: incremental (IVF trains on the second)
    index.add(X[n // 2 : n], IDS[n // 2 : n])
    return index


@pytest.fixture(scope="module")
def exact() -> ExactIndex:
    index = ExactIndex(D)
    index.add(X, IDS)
    return index


@pytest.fixture(scope="module", params=["hnsw", "ivfpq"])
def built(request: pytest.FixtureRequest) -> VectorIndex:
    return _build(request.param)


def recall(got: list[list[str]], want: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


def test_recall_against_exact_and_scores_are_exact_cosines(built, exact):
    assert isinstance(built, HNSWIndex | IVFPQIndex)
    if isinstance(built, IVFPQIndex):
        assert built.trained
    ids, scores = built.search(Q, k=10)
    want, _ = exact.search(Q, k=10)
    assert recall(ids, want) >= RECALL_BOUND[built.backend]
    assert scores.dtype == np.float32 and scores.shape == (len(Q), 10)
    assert (np.diff(scores, axis=1) <= 0).all()  # descending
    rows = np.array([[IDS.index(i) for i in r] for r in ids])
    cos = np.einsum("qkd,qd->qk", _unit(X)[rows], _unit(Q))
    np.testing.assert_allclose(scores, cos, atol=1e-5)  # exact cosines, not PQ estimates


def test_k_clamps_and_single_query(built):
    ids, scores = built.search(Q[0], k=N + 5)
    assert scores.shape == (1, N) and sorted(ids[0]) == sorted(IDS)


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip_is_identical(built, mmap, tmp_path):
    built.save(tmp_path / "ix")
    back = open_index(tmp_path / "ix", mmap=mmap)
    assert type(back) is type(built) and back.params == built.params
    assert back.metadata == {"model": "m"} and back.ids == IDS and IDS[7] in back
    ids, scores = built.search(Q, k=10)
    ids2, scores2 = back.search(Q, k=10)
    assert ids2 == ids
    np.testing.assert_array_equal(scores2, scores)


def _digest(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def test_add_and_remove_after_mmap_load_leave_the_files_alone(built, exact, tmp_path):
    d = tmp_path / "ix"
    built.save(d)
    before = _digest(d)
    back = open_index(d, mmap=True)
    # faiss aborts the process when a memory-mapped index is changed: the backend copies first
    extra = _mixture(50, 3)
    back.add(extra, [f"new{i}" for i in range(50)])
    assert len(back) == N + 50
    ids, _ = back.search(extra[:5], k=1)
    assert [r[0] for r in ids] == [f"new{i}" for i in range(5)]
    gone = IDS[::7]
    assert back.remove(gone) == len(gone)
    assert _digest(d) == before
    assert open_index(d).search(Q, k=10)[0] == built.search(Q, k=10)[0]


@pytest.mark.parametrize("backend", ["hnsw", "ivfpq"])
def test_removed_ids_are_never_returned(backend, exact, tmp_path):
    index = _build(backend)
    gone = set(IDS[: N // 10])  # 10%: tombstones, no compaction yet
    assert index.remove(sorted(gone)) == len(gone)
    assert len(index) == N - len(gone) and IDS[0] not in index and len(index.ids) == len(index)
    ids, _ = index.search(Q, k=50)
    assert not gone & {i for r in ids for i in r}
    # the removed vectors' own queries must find something else, never themselves
    ids, _ = index.search(X[:20], k=1)
    assert not gone & {r[0] for r in ids}
    index.save(tmp_path / "ix")  # tombstones are saved as null ids
    back = open_index(tmp_path / "ix")
    assert back.search(Q, k=50)[0] == index.search(Q, k=50)[0]
    # past a quarter removed the backend compacts; recall holds against an exact index of
    # the rest
    more = IDS[N // 10 : N // 2]
    index.remove(more)
    rest = ExactIndex(D)
    rest.add(X[N // 2 :], IDS[N // 2 :])
    assert len(index._label_ids) == len(index) == N - N // 2  # compacted
    assert recall(index.search(Q, k=10)[0], rest.search(Q, k=10)[0]) >= RECALL_BOUND[backend]
    with pytest.raises(ValueError, match="not in the index"):
        index.remove([IDS[0], IDS[-1]])  # one already removed: nothing is removed
    assert IDS[-1] in index


def test_ivfpq_is_exact_until_it_can_train(exact):
    index = make_index(D, "ivfpq", **PARAMS["ivfpq"])
    assert isinstance(index, IVFPQIndex) and index.train_min == 39 * 64
    index.add(X[:1000], IDS[:1000])
    assert not index.trained
    small = ExactIndex(D)
    small.add(X[:1000], IDS[:1000])
    assert index.search(Q, k=10)[0] == small.search(Q, k=10)[0]  # exact scan, not garbage
    index.add(X[1000:], IDS[1000:])  # crosses 2496: trains on everything so far
    assert index.trained


def test_hnsw_search_with_most_ids_removed_still_fills_k():
    index = make_index(D, "hnsw", M=4, ef_search=4, ef_construction=8)
    index.add(X[:400], IDS[:400])
    index.compact_fraction = 1.0  # keep the tombstones: the walk meets mostly removed nodes
    index.remove(IDS[:390])
    ids, _ = index.search(Q[:5], k=10)
    assert all(sorted(r) == sorted(IDS[390:400]) for r in ids)


def test_bad_inputs_are_value_errors(built):
    with pytest.raises(ValueError, match="k: expected a positive int"):
        built.search(Q, k=0)
    with pytest.raises(ValueError, match=r"queries: expected shape \(n, 32\)"):
        built.search(np.ones(31), k=1)
    with pytest.raises(ValueError, match="queries: contains NaN"):
        built.search(np.full(D, np.nan), k=1)
    with pytest.raises(ValueError, match="ids: already in the index"):
        built.add(X[:1], IDS[:1])
    empty = make_index(D, built.backend, **PARAMS[built.backend])
    with pytest.raises(ValueError, match="the index is empty"):
        empty.search(Q, k=1)
    with pytest.raises(ValueError, match="m: 5 sub-quantizers do not divide dim 32"):
        IVFPQIndex(D, m=5)
    with pytest.raises(ValueError, match="ef_search: expected a positive int"):
        HNSWIndex(D, ef_search=0)
    with pytest.raises(ValueError, match="backend: expected one of"):
        make_index(D, "annoy")


def test_auto_picks_exact_below_the_threshold_and_hnsw_above():
    assert type(make_index(512)) is ExactIndex
    assert type(make_index(512, expected_size=10_000)) is ExactIndex
    assert type(make_index(64, expected_size=300_000)) is ExactIndex  # scaled by 512 / dim
    hnsw = make_index(512, expected_size=1_000_000, ef_search=32)
    assert isinstance(hnsw, HNSWIndex) and hnsw.ef_search == 32 and hnsw.ef_construction == 128
    ivf = make_index(512, "ivfpq", expected_size=1_000_000)
    assert isinstance(ivf, IVFPQIndex) and ivf.nlist == 1024 and ivf.refine == 100


def test_threads_setting_is_restored(built):
    old = faiss.omp_get_max_threads()
    built.threads = 1  # type: ignore[attr-defined]
    try:
        built.search(Q, k=3)
    finally:
        built.threads = None  # type: ignore[attr-defined]
    assert faiss.omp_get_max_threads() == old


# ---- saved files faiss must never see --------------------------------------------------------
def _edit_json(name, **changes):
    def edit(d: Path) -> None:
        value = json.loads((d / name).read_text())
        value.update(changes)
        (d / name).write_text(json.dumps(value))

    return edit


def _truncate(d: Path) -> None:
    data = (d / "index.faiss").read_bytes()
    (d / "index.faiss").write_bytes(data[: len(data) // 2])


def _garbage_same_size(d: Path) -> None:
    size = (d / "index.faiss").stat().st_size
    (d / "index.faiss").write_bytes(np.random.default_rng(0).bytes(size))


def _flip_inside(d: Path) -> None:  # right fourcc and size, one neighbour id corrupted
    data = bytearray((d / "index.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "index.faiss").write_bytes(bytes(data))


def _ids_short(d: Path) -> None:
    ids = json.loads((d / "ids.json").read_text())
    (d / "ids.json").write_text(json.dumps(ids[:-1]))


def _other_backends_file(d: Path) -> None:  # a valid faiss index of another class
    other = faiss.IndexFlatIP(D)
    faiss.write_index(other, str(d / "index.faiss"))


CORRUPT = [
    ("truncated", _truncate, "index.faiss is .* bytes, index.json says"),
    ("garbage, same size", _garbage_same_size, "is not a faiss|SHA-256"),
    ("a byte flipped", _flip_inside, "does not match its SHA-256"),
    ("another index class", _other_backends_file, "bytes, index.json says|is not a faiss"),
    ("missing", lambda d: (d / "index.faiss").unlink(), "missing"),
    ("count edited", _edit_json("index.json", count=5), "5 in index.json"),
    ("dim edited", _edit_json("index.json", dim=64), "x 64"),
    ("newer format", _edit_json("index.json", format=99), "format 99 is newer"),
    ("unknown backend", _edit_json("index.json", backend="annoy"), "backend 'annoy'"),
    ("bad params", _edit_json("index.json", params={"M": -1}), r"params: .*M|params: .*unexpected"),
    ("no file record", _edit_json("index.json", files={}), "records no index.faiss"),
    ("ids short", _ids_short, "in index.json, 2999 ids"),
    ("ids.json garbage", lambda d: (d / "ids.json").write_bytes(b"\xff\x00["), "ids.json"),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each backend's index of X, saved once (the corrupt-file cases edit copies)."""
    out = {}
    for backend in ("hnsw", "ivfpq"):
        out[backend] = tmp_path_factory.mktemp(backend) / "ix"
        _build(backend).save(out[backend])
    return out


@pytest.mark.parametrize("backend", ["hnsw", "ivfpq"])
@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_a_corrupt_faiss_index_is_a_value_error_naming_the_directory(
    backend, edit, message, saved, tmp_path
):
    d = tmp_path / "ix"
    shutil.copytree(saved[backend], d)
    open_index(d)  # loads before the edit
    edit(d)
    with pytest.raises(ValueError, match=message) as e:
        open_index(d)
    assert str(e.value).startswith(f"{d}: ")


def test_exact_load_of_an_hnsw_directory_points_to_open_index(built, tmp_path):
    built.save(tmp_path / "ix")
    with pytest.raises(ValueError, match=f"a {built.backend} index, not exact .*open_index"):
        ExactIndex.load(tmp_path / "ix")


def test_a_failed_save_leaves_the_previous_index(built, tmp_path, monkeypatch):
    d = tmp_path / "ix"
    built.save(d)
    (d / "regions.npy").write_bytes(b"the retriever's")  # not the index's: kept by saves
    before = _digest(d)
    other = make_index(D, built.backend, **PARAMS[built.backend])
    other.add(X[:10], IDS[:10])

    def crash(directory: Path) -> dict[str, object]:
        (directory / "index.faiss").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(other, "_write", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save(d)
    assert _digest(d) == before and os.listdir(tmp_path) == ["ix"]  # no temporary left
    monkeypatch.undo()
    other.save(d)
    assert len(open_index(d)) == 10 and (d / "regions.npy").read_bytes() == b"the retriever's"


def test_import_mmfast_does_not_import_faiss_and_says_how_to_get_it():
    code = (
        "import sys, mmfast, mmfast.index\n"
        "assert 'faiss' not in sys.modules, 'imported faiss'\n"
        "sys.modules['faiss'] = None  # as if not installed\n"
        "try:\n"
        "    mmfast.index.make_index(8, 'hnsw')\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "pip install 'mmfast[index]'" in out.stdout


def test_saved_directory_is_plain_json_and_npy(built, tmp_path):
    built.save(tmp_path / "ix")
    names = sorted(os.listdir(tmp_path / "ix"))
    want = ["ids.json", "index.faiss", "index.json"]
    assert names == (sorted([*want, "embeddings.npy"]) if built.backend == "ivfpq" else want)
    meta = json.loads((tmp_path / "ix" / "index.json").read_text(encoding="utf-8"))
    assert meta["backend"] == built.backend and meta["count"] == N and meta["format"] == 2
    assert json.loads((tmp_path / "ix" / "ids.json").read_text(encoding="utf-8")) == IDS
    shutil.rmtree(tmp_path / "ix")
