"""Cross-modal retrieval metrics: recall at K, median and mean rank, both directions.

The protocol is the Karpathy-split one used by VSE++, CLIP, ALBEF and the like:

- text -> image: each caption is a query over all images; its hit at K is its own image among
  the top K.
- image -> text: each image is a query over all captions; its hit at K is ANY of its captions
  (COCO and Flickr30k have 5 per image) among the top K, so its rank is that of its
  best-ranked caption.

Ranks are 1-based and pessimistic about ties: a true item's rank is 1 + the number of OTHER
candidates scoring at least as high (``>=``), so a model that gives every candidate the same
score ranks last, not first. For image -> text the other captions of the same image are not
counted (they are hits, not competitors): rank = 1 + #{captions of other images scoring >=
the image's best caption}.

Recalls are percentages (0-100, as papers print them); ``rsum`` is the sum of the six recalls
(R@1, R@5, R@10 in each direction), so at most 600.

Memory: the similarity matrix ``sim`` (n_texts, n_images) is read a chunk of rows at a time;
besides ``sim`` and O(n_texts + n_images) vectors, one (chunk, n_images) boolean comparison is
alive at a time (25k captions x 5k images, default chunk of 1024 rows: 5 MB). From
embeddings, ``sim`` is never built: the float32 chunk of it (20 MB there) is alive beside
that comparison, and the normalised copies of the embeddings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from ._checks import positive_int

__all__ = [
    "KS",
    "Ranks",
    "RetrievalMetrics",
    "metrics_from_ranks",
    "normalize_rows",
    "ranks_from_embeddings",
    "ranks_from_similarity",
    "retrieval_metrics",
    "retrieval_metrics_from_embeddings",
]

KS: tuple[int, ...] = (1, 5, 10)  # the K of R@K that papers report (and rSUM sums)
DEFAULT_CHUNK = 1024  # rows of sim per block

# (a, b) -> sim[a:b], (b - a, n_images): where the rows come from (a slice, or a matmul)
_Blocks = Callable[[int, int], np.ndarray]


@dataclass(frozen=True)
class Ranks:
    """1-based pessimistic ranks of the true items (see the module docstring)."""

    t2i: np.ndarray  # (n_texts,) int64: rank of each caption's image among all images
    i2t: np.ndarray  # (n_images,) int64: rank of each image's best caption among all captions


@dataclass(frozen=True)
class RetrievalMetrics:
    """Recalls in percent (0-100); ranks 1-based (median may end in .5); rsum <= 600."""

    t2i_r1: float
    t2i_r5: float
    t2i_r10: float
    i2t_r1: float
    i2t_r5: float
    i2t_r10: float
    rsum: float
    t2i_median_rank: float
    t2i_mean_rank: float
    i2t_median_rank: float
    i2t_mean_rank: float
    n_texts: int
    n_images: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _check_image_of_text(image_of_text: object, n_texts: int, n_images: int) -> np.ndarray:
    """image_of_text as (n_texts,) int64 in [0, n_images), every image with a caption."""
    a = np.asarray(image_of_text)
    if a.ndim != 1 or len(a) != n_texts:
        raise ValueError(f"image_of_text: expected shape ({n_texts},), got {a.shape}")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"image_of_text: expected integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    bad = np.flatnonzero((a < 0) | (a >= n_images))
    if len(bad):
        t = int(bad[0])
        raise ValueError(f"image_of_text[{t}]: {a[t]} is not an image index in [0, {n_images})")
    # An image without captions has no true item to rank: image -> text is undefined for it.
    empty = np.flatnonzero(np.bincount(a, minlength=n_images) == 0)
    if len(empty):
        raise ValueError(
            f"image_of_text: {len(empty)} image(s) have no caption (first: image {empty[0]})"
        )
    return a


def _check_block(block: np.ndarray, start: int) -> None:
    # NaN compares False with everything, which would silently rank it below every candidate;
    # min propagates NaN, so one reduction finds it without another (chunk, n_images) block.
    if np.issubdtype(block.dtype, np.floating):
        row_min = block.min(axis=1)  # (m,)
        nan = np.flatnonzero(np.isnan(row_min))
        if len(nan):
            raise ValueError(f"sim: row {start + int(nan[0])} contains NaN")


def _ranks(blocks: _Blocks, image_of_text: np.ndarray, n_images: int, chunk: int) -> Ranks:
    """Both directions' ranks from sim's row blocks, in two passes over the rows.

    Pass 1: text -> image ranks and each caption's true score; pass 2 needs every image's best
    caption score s*_i (known only after pass 1) to count the captions of other images that
    score >= s*_i.
    """
    g = image_of_text  # (T,)
    n_texts = len(g)
    t2i = np.empty(n_texts, np.int64)
    true_parts: list[np.ndarray] = []
    for a in range(0, n_texts, chunk):
        block = blocks(a, min(a + chunk, n_texts))  # (m, I)
        _check_block(block, a)
        rows = np.arange(len(block))
        true = block[rows, g[a : a + len(block)]]  # (m,) each caption's score for its image
        # rank = #{images j : sim[t, j] >= sim[t, g[t]]}, the true image itself included (the
        # "1 +"); everything stays in sim's own dtype, so exact ties stay exact.
        t2i[a : a + len(block)] = (block >= true[:, None]).sum(axis=1)
        true_parts.append(true)
    s_true = np.concatenate(true_parts)  # (T,) sim[t, g[t]]
    s_best = np.empty(n_images, s_true.dtype)  # (I,) s*_i = max over image i's captions
    s_best[g] = s_true  # any caption's score (every image has one), then the max
    np.maximum.at(s_best, g, s_true)

    i2t = np.ones(n_images, np.int64)  # the "1 +"
    for a in range(0, n_texts, chunk):
        block = blocks(a, min(a + chunk, n_texts))  # (m, I)
        gc = g[a : a + len(block)]
        ge = block >= s_best[None, :]  # (m, I)
        i2t += ge.sum(axis=0)
        # Captions of image i that reach s*_i are hits, not competitors: take them out again.
        own = ge[np.arange(len(block)), gc]  # (m,)
        i2t -= np.bincount(gc[own], minlength=n_images)
    return Ranks(t2i=t2i, i2t=i2t)


def ranks_from_similarity(
    sim: np.ndarray, image_of_text: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK
) -> Ranks:
    """Ranks both ways from ``sim`` (n_texts, n_images), higher = more similar, any real
    dtype (not copied), and ``image_of_text`` (n_texts,) ints: each caption's image."""
    chunk = positive_int("chunk_size", chunk_size)
    s = np.asarray(sim)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"sim: expected a non-empty (n_texts, n_images) matrix, got {s.shape}")
    if s.dtype == np.bool_ or not (
        np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)
    ):
        raise ValueError(f"sim: expected real numbers, got dtype {s.dtype}")
    g = _check_image_of_text(image_of_text, s.shape[0], s.shape[1])
    return _ranks(lambda a, b: s[a:b], g, s.shape[1], chunk)


def normalize_rows(x: np.ndarray, name: str) -> np.ndarray:
    """(N, D) embeddings -> float32 rows of unit L2 norm (a copy); ValueError for a zero or
    non-finite row, which has no direction."""
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (N, D) matrix, got {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    # Norms in float64: a float32 sum of squares overflows for |x| > ~1.8e19.
    norms = np.linalg.norm(a.astype(np.float64), axis=1)  # (N,)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if len(bad):
        raise ValueError(f"{name}[{bad[0]}]: a zero or non-finite embedding cannot be normalised")
    unit: np.ndarray = (a / norms[:, None]).astype(np.float32)  # (N, D)
    return unit


def ranks_from_embeddings(
    text_embeddings: np.ndarray,
    image_embeddings: np.ndarray,
    image_of_text: np.ndarray,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> Ranks:
    """Ranks both ways by cosine similarity of ``text_embeddings`` (n_texts, D) and
    ``image_embeddings`` (n_images, D), which need not be normalised. sim is never built
    whole: each (chunk, n_images) block is a float32 matmul, computed once per pass (twice in
    all, the same blocks both times, so ties stay ties)."""
    chunk = positive_int("chunk_size", chunk_size)
    t = normalize_rows(text_embeddings, "text_embeddings")  # (T, D)
    im = normalize_rows(image_embeddings, "image_embeddings")  # (I, D)
    if t.shape[1] != im.shape[1]:
        raise ValueError(
            f"embeddings: texts have dim {t.shape[1]}, images {im.shape[1]} (must be equal)"
        )
    g = _check_image_of_text(image_of_text, len(t), len(im))
    im_t = np.ascontiguousarray(im.T)  # (D, I)
    return _ranks(lambda a, b: t[a:b] @ im_t, g, len(im), chunk)


def metrics_from_ranks(ranks: Ranks) -> RetrievalMetrics:
    def recall(r: np.ndarray, k: int) -> float:
        return 100.0 * float(np.mean(r <= k))

    t2i = [recall(ranks.t2i, k) for k in KS]
    i2t = [recall(ranks.i2t, k) for k in KS]
    return RetrievalMetrics(
        t2i_r1=t2i[0],
        t2i_r5=t2i[1],
        t2i_r10=t2i[2],
        i2t_r1=i2t[0],
        i2t_r5=i2t[1],
        i2t_r10=i2t[2],
        rsum=sum(t2i) + sum(i2t),
        t2i_median_rank=float(np.median(ranks.t2i)),
        t2i_mean_rank=float(np.mean(ranks.t2i)),
        i2t_median_rank=float(np.median(ranks.i2t)),
        i2t_mean_rank=float(np.mean(ranks.i2t)),
        n_texts=len(ranks.t2i),
        n_images=len(ranks.i2t),
    )


def retrieval_metrics(
    sim: np.ndarray, image_of_text: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK
) -> RetrievalMetrics:
    """Recall@1/5/10, rSUM, median and mean rank, both directions, from sim (n_texts,
    n_images) and image_of_text (n_texts,)."""
    return metrics_from_ranks(ranks_from_similarity(sim, image_of_text, chunk_size=chunk_size))


def retrieval_metrics_from_embeddings(
    text_embeddings: np.ndarray,
    image_embeddings: np.ndarray,
    image_of_text: np.ndarray,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> RetrievalMetrics:
    """:func:`retrieval_metrics` of the cosine similarities of the embeddings."""
    return metrics_from_ranks(
        ranks_from_embeddings(
            text_embeddings, image_embeddings, image_of_text, chunk_size=chunk_size
        )
    )
