"""mmfast.retrieval_metrics against a plain float64 reference (loops), on random similarity
matrices with ties and several captions per image; small cases worked out by hand; chunking;
the embeddings entry point; bad input; memory (one block at a time)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from mmfast.retrieval_metrics import (
    Ranks,
    metrics_from_ranks,
    ranks_from_embeddings,
    ranks_from_similarity,
    retrieval_metrics,
    retrieval_metrics_from_embeddings,
)


def reference_ranks(sim: np.ndarray, image_of_text: np.ndarray) -> tuple[list[int], list[int]]:
    """The definitions, literally: pessimistic 1-based ranks, float64, one query at a time."""
    s = np.asarray(sim, dtype=np.float64)
    n_texts, n_images = s.shape
    t2i = []
    for t in range(n_texts):
        true = s[t, image_of_text[t]]
        others = sum(1 for j in range(n_images) if j != image_of_text[t] and s[t, j] >= true)
        t2i.append(1 + others)
    i2t = []
    for i in range(n_images):
        mine = [t for t in range(n_texts) if image_of_text[t] == i]
        best = max(s[t, i] for t in mine)
        others = sum(1 for t in range(n_texts) if image_of_text[t] != i and s[t, i] >= best)
        i2t.append(1 + others)
    return t2i, i2t


def reference_metrics(t2i: list[int], i2t: list[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
        out[f"{name}_median_rank"] = float(np.median(ranks))
        out[f"{name}_mean_rank"] = sum(ranks) / len(ranks)
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("t2i", "i2t") for k in (1, 5, 10))
    return out


def random_case(rng: np.random.Generator, n_images: int, levels: int | None):
    """Every image gets 1-6 captions, in shuffled order; levels: few distinct values (ties)."""
    counts = rng.integers(1, 7, n_images)
    g = rng.permutation(np.repeat(np.arange(n_images), counts))
    shape = (len(g), n_images)
    if levels is None:
        sim = rng.standard_normal(shape).astype(np.float32)
    else:
        sim = rng.integers(0, levels, shape).astype(np.float32)
    return sim, g


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("levels", [2, 5, None])
def test_matches_reference_with_ties_and_several_captions(seed, levels):
    rng = np.random.default_rng([seed, levels or 0])
    sim, g = random_case(rng, n_images=int(rng.integers(1, 40)), levels=levels)
    t2i, i2t = reference_ranks(sim, g)
    chunk = int(rng.integers(1, len(g) + 3))
    ranks = ranks_from_similarity(sim, g, chunk_size=chunk)
    assert ranks.t2i.tolist() == t2i
    assert ranks.i2t.tolist() == i2t
    got = retrieval_metrics(sim, g, chunk_size=chunk).as_dict()
    want = reference_metrics(t2i, i2t)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert (got["n_texts"], got["n_images"]) == sim.shape


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(7)
    sim, g = random_case(rng, n_images=300, levels=50)  # ~1000 captions, many ties
    whole = ranks_from_similarity(sim, g, chunk_size=len(g))
    for chunk in (1, 2, 17, 256, len(g) - 1, 10**6):
        part = ranks_from_similarity(sim, g, chunk_size=chunk)
        np.testing.assert_array_equal(part.t2i, whole.t2i)
        np.testing.assert_array_equal(part.i2t, whole.i2t)


def test_hand_built_case():
    # 3 images, 2 captions each: captions 0,1 -> image 0; 2,3 -> image 1; 4,5 -> image 2.
    sim = np.array(
        [
            [0.9, 0.1, 0.2],  # t0: image 0 first                    -> t2i rank 1
            [0.3, 0.5, 0.4],  # t1: image 0 behind 1 and 2           -> rank 3
            [0.2, 0.6, 0.6],  # t2: image 1 ties image 2 (counted against) -> rank 2
            [0.1, 0.7, 0.0],  # t3: image 1 first                    -> rank 1
            [0.8, 0.0, 0.5],  # t4: image 2 behind image 0           -> rank 2
            [0.0, 0.0, 0.0],  # t5: all tied                          -> rank 3
        ]
    )
    g = np.array([0, 0, 1, 1, 2, 2])
    r = ranks_from_similarity(sim, g)
    assert r.t2i.tolist() == [1, 3, 2, 1, 2, 3]
    # image 0: best own caption t0 (0.9); others >= 0.9: none          -> rank 1
    # image 1: best own t3 (0.7); others >= 0.7 in column 1: none        -> rank 1
    # image 2: best own t4 (0.5); others >= 0.5: t2 (0.6)                -> rank 2
    assert r.i2t.tolist() == [1, 1, 2]
    m = metrics_from_ranks(r)
    assert m.t2i_r1 == pytest.approx(100 * 2 / 6)
    assert m.t2i_r5 == m.t2i_r10 == 100.0
    assert m.i2t_r1 == pytest.approx(100 * 2 / 3)
    assert m.rsum == pytest.approx(100 * 2 / 6 + 200 + 100 * 2 / 3 + 200)
    assert m.t2i_median_rank == 2.0 and m.t2i_mean_rank == pytest.approx(2.0)
    assert m.i2t_median_rank == 1.0 and m.i2t_mean_rank == pytest.approx(4 / 3)


def test_constant_scores_rank_last():
    # A model that scores everything the same must not look perfect.
    n_images, per = 12, 5
    g = np.repeat(np.arange(n_images), per)
    m = retrieval_metrics(np.zeros((len(g), n_images), np.float32), g, chunk_size=7)
    assert m.t2i_median_rank == m.t2i_mean_rank == n_images
    assert m.i2t_median_rank == len(g) - per + 1
    assert m.t2i_r1 == m.t2i_r10 == 0.0 and m.i2t_r10 == 0.0
    assert m.t2i_r1 == 0.0 and m.rsum == 0.0


def test_recall_at_k_boundaries():
    # One caption per image; caption t's true image at rank t + 1 exactly (distinct scores).
    n = 12
    sim = np.zeros((n, n))
    for t in range(n):
        order = [j for j in range(n) if j != t]
        for pos, j in enumerate(order):
            sim[t, j] = n - pos  # the t images before the true one score higher
        sim[t, t] = n - t + 0.5
    g = np.arange(n)
    assert ranks_from_similarity(sim, g).t2i.tolist() == list(range(1, n + 1))
    m = retrieval_metrics(sim, g)
    assert (m.t2i_r1, m.t2i_r5, m.t2i_r10) == pytest.approx((100 / 12, 500 / 12, 1000 / 12))
    assert m.t2i_median_rank == 6.5


def test_integer_and_float16_similarities():
    rng = np.random.default_rng(3)
    sim, g = random_case(rng, n_images=15, levels=4)
    want = ranks_from_similarity(sim.astype(np.float64), g)
    for dtype in (np.int64, np.int8, np.float16):
        got = ranks_from_similarity(sim.astype(dtype), g, chunk_size=4)
        np.testing.assert_array_equal(got.t2i, want.t2i)
        np.testing.assert_array_equal(got.i2t, want.i2t)


def test_embeddings_match_cosine_reference():
    rng = np.random.default_rng(11)
    n_images, per, d = 30, 3, 16
    img = rng.standard_normal((n_images, d))
    g = rng.permutation(np.repeat(np.arange(n_images), per))
    txt = img[g] + 1.5 * rng.standard_normal((len(g), d))
    # Different norms per row: the function normalises, so they must not matter.
    txt_scaled = txt * rng.uniform(0.1, 10, (len(g), 1))
    img_scaled = img * rng.uniform(0.1, 10, (n_images, 1))
    cos = (txt / np.linalg.norm(txt, axis=1, keepdims=True)) @ (
        img / np.linalg.norm(img, axis=1, keepdims=True)
    ).T
    t2i, i2t = reference_ranks(cos, g)
    # The function computes in float32: no two scores of a query may be close enough to swap.
    for m in (cos, cos.T):  # a text's scores (t2i), an image's scores (i2t)
        gaps = np.abs(m[:, :, None] - m[:, None, :])[:, ~np.eye(m.shape[1], dtype=bool)]
        assert gaps.min() > 1e-6  # float32 rounding (~1e-7 here) cannot swap two of them
    r = ranks_from_embeddings(txt_scaled, img_scaled, g, chunk_size=8)
    assert r.t2i.tolist() == t2i
    assert r.i2t.tolist() == i2t
    m = retrieval_metrics_from_embeddings(txt_scaled, img_scaled, g, chunk_size=8).as_dict()
    for key, value in reference_metrics(t2i, i2t).items():
        assert m[key] == pytest.approx(value), key


def test_embeddings_exact_ties_are_pessimistic():
    # Images 0 and 1 are the same vector: each of their captions ties with the other image.
    img = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    txt = np.array([[2.0, 0.1, 0.0], [3.0, 0.2, 0.1], [0.0, 1.0, 0.3]], np.float32)
    g = np.array([0, 1, 2])
    for chunk in (1, 2, 3):
        r = ranks_from_embeddings(txt, img, g, chunk_size=chunk)
        assert r.t2i.tolist() == [2, 2, 1]
        # Columns 0 and 1 are equal: cos(t0) = 2/|t0| = 0.9988 > cos(t1) = 3/|t1| = 0.9972.
        # Image 0's best own caption t0 is above t1 -> rank 1; image 1's own t1 is below t0
        # -> rank 2.
        assert r.i2t.tolist() == [1, 2, 1]


def test_one_block_at_a_time():
    # sim is 8 MB; with 64-row chunks a (chunk, n_images) bool block is 64 kB. Anything that
    # materialises a full-size comparison or copy of sim would need 2-8 MB.
    rng = np.random.default_rng(5)
    n_images = 1000
    g = np.repeat(np.arange(n_images), 2)
    sim = rng.standard_normal((len(g), n_images)).astype(np.float32)
    tracemalloc.start()
    try:
        ranks_from_similarity(sim, g, chunk_size=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak


def test_bad_input():
    sim = np.zeros((4, 2), np.float32)
    g = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"image_of_text: expected shape \(4,\)"):
        ranks_from_similarity(sim, g[:3])
    with pytest.raises(ValueError, match=r"image_of_text\[3\]: 2 is not an image index"):
        ranks_from_similarity(sim, np.array([0, 0, 1, 2]))
    with pytest.raises(ValueError, match=r"image_of_text: expected integers"):
        ranks_from_similarity(sim, g.astype(np.float32))
    with pytest.raises(ValueError, match=r"1 image\(s\) have no caption \(first: image 1\)"):
        ranks_from_similarity(sim, np.array([0, 0, 0, 0]))
    bad = sim.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"sim: row 2 contains NaN"):
        ranks_from_similarity(bad, g, chunk_size=1)
    with pytest.raises(ValueError, match=r"sim: expected a non-empty"):
        ranks_from_similarity(np.zeros((0, 2)), g[:0])
    with pytest.raises(ValueError, match=r"sim: expected real numbers"):
        ranks_from_similarity(sim.astype(bool), g)
    with pytest.raises(ValueError, match=r"chunk_size"):
        ranks_from_similarity(sim, g, chunk_size=0)
    emb = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"texts have dim 3, images 2"):
        ranks_from_embeddings(emb, np.ones((2, 2)), g)
    zero = emb.copy()
    zero[1] = 0
    with pytest.raises(ValueError, match=r"text_embeddings\[1\]: a zero or non-finite"):
        ranks_from_embeddings(zero, np.ones((2, 3)), g)
    with pytest.raises(ValueError, match=r"image_embeddings\[0\]: a zero or non-finite"):
        ranks_from_embeddings(emb, np.array([[np.inf, 0, 0], [1, 0, 0]]), g)


def test_ranks_type():
    r = ranks_from_similarity(np.eye(3), np.arange(3))
    assert isinstance(r, Ranks) and r.t2i.dtype == np.int64 and r.i2t.dtype == np.int64
