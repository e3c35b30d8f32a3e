"""Vector index backends at retrieval scale: build time, memory, batch-1 query latency, recall.

Data: a clustered set like image embeddings (not uniform noise, on which every ANN index looks
bad and every cluster-based one looks wrong): a Gaussian mixture of --centres unit centres,
each with its own spread (0.4-1.2 of a unit vector's length in noise) and weight (log-normal),
normalised. Queries are held-out draws from the same mixture. Ground truth: the exact backend
(numpy sgemm), which is also timed. recall@10 = |approx top-10 ∩ exact top-10| / 10, averaged.

Every approximate setting is timed on single queries (batch 1) on 2 and on 1 thread(s) (faiss's
OpenMP threads; OpenBLAS's for the exact scan), as p50 and p99 over --latency-queries queries
after a warm-up. Memory: growth of this process's RssAnon (allocated memory) while building;
RssAnon and RssFile (pages of memory-mapped files: page cache, reclaimable) after a
memory-mapped load plus queries; the saved directory's size.

    python benchmarks/bench_index.py                 # 1M x 512, ~15-25 min on 2 cores
    python benchmarks/bench_index.py --n 100000      # a quick look
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmfast.index import ExactIndex, HNSWIndex, IVFPQIndex, VectorIndex, open_index


def rss_mb(kind: str = "RssAnon") -> float:
    """Resident memory of this process (MB): RssAnon (allocated) or RssFile (mapped files:
    page cache, reclaimable)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir()) / 2**20


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """OpenBLAS threads of numpy's bundled library (the exact scan's sgemm), restored after."""
    libs = {line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line}
    lib = ctypes.CDLL(sorted(libs)[0]) if libs else None
    get = getattr(lib, "scipy_openblas_get_num_threads64_", None)
    set_ = getattr(lib, "scipy_openblas_set_num_threads64_", None)
    if get is None or set_ is None:
        print("  (cannot set OpenBLAS threads here: exact timed with its default)")
        yield
        return
    old = get()
    set_(n)
    try:
        yield
    finally:
        set_(old)


def mixture(
    n: int, m: int, dim: int, centres: int, seed: int, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """n base and m query vectors (float32 (n, dim), (m, dim), unit rows) of one mixture. With
    `shift`, queries move by shift * u (one fixed unit direction) before normalising: a
    "modality gap" like CLIP's, text queries in another cone than the images they find."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    spread = rng.uniform(0.4, 1.2, centres).astype(np.float32)
    weight = np.exp(rng.standard_normal(centres))
    weight /= weight.sum()

    def draw(count: int) -> np.ndarray:
        out = np.empty((count, dim), np.float32)
        for s in range(0, count, 1 << 16):
            e = min(count, s + (1 << 16))
            j = rng.choice(centres, e - s, p=weight)
            noise = rng.standard_normal((e - s, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
            x = c[j] + spread[j, None] * noise
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    base, queries = draw(n), draw(m)
    if shift:
        u = rng.standard_normal(dim).astype(np.float32)
        queries += np.float32(shift) * u / np.linalg.norm(u)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return base, queries


def latency_ms(search: Callable[[np.ndarray], object], q: np.ndarray) -> tuple[float, float]:
    """p50, p99 in ms of single-query searches over the rows of q (after 10 warm-up queries)."""
    for row in q[:10]:
        search(row)
    times = []
    for row in q:
        t0 = time.perf_counter()
        search(row)
        times.append(time.perf_counter() - t0)
    p50, p99 = np.percentile(times, [50, 99]) * 1e3
    return float(p50), float(p99)


def recall_at(got: list[list[str]], truth: list[list[str]], k: int) -> float:
    return float(
        np.mean([len(set(g[:k]) & set(t[:k])) / k for g, t in zip(got, truth, strict=True)])
    )


def build(index: VectorIndex, x: np.ndarray, ids: list[str]) -> tuple[float, float]:
    """Add x to index; (seconds, RssAnon growth MB)."""
    gc.collect()
    r0, t0 = rss_mb(), time.perf_counter()
    for s in range(0, len(x), 1 << 18):  # as an indexer would: in batches
        index.add(x[s : s + (1 << 18)], ids[s : s + (1 << 18)])
    return time.perf_counter() - t0, rss_mb() - r0


def load() -> str:
    """The machine's load average (1 min): other processes share these cores."""
    return f"load average {os.getloadavg()[0]:.1f}"


def row(*cells: object) -> None:
    print(
        "| " + " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in cells) + " |",
        flush=True,
    )


def run_exact(
    args: argparse.Namespace,
    x: np.ndarray,
    q: np.ndarray,
    ids: list[str],
    lat_q: np.ndarray,
    root: Path,
) -> list[list[str]]:
    print(f"\n## exact (numpy sgemm), n = {len(x)} ({load()})\n")
    ex = ExactIndex(x.shape[1])
    secs, grew = build(ex, x, ids)
    t0 = time.perf_counter()
    truth, _ = ex.search(q, 10)
    gt = time.perf_counter() - t0
    print(
        f"build {secs:.1f} s, RssAnon +{grew:.0f} MB; ground truth for {len(q)} queries "
        f"{gt:.1f} s\n"
    )
    print("| threads | p50 ms | p99 ms |\n|---|---|---|")
    search = partial(ex.search, k=10)
    for t in args.threads:
        with blas_threads(t):
            row(t, *latency_ms(search, lat_q[: args.exact_queries]))
    saved, disk = save_timed(ex, root, "exact")
    del ex, search
    report_load(root, "exact", lat_q[: args.exact_queries], saved, disk)
    heads = " | ".join(f"p50 ms {t}T | p99 ms {t}T" for t in args.threads)
    print(f"\nexact by size:\n\n| n | {heads} |\n|---|" + "---|" * 2 * len(args.threads))
    for n in args.exact_sizes:
        if n < len(x):
            small = ExactIndex(x.shape[1])
            small.add(x[:n], ids[:n])
            cells: list[object] = [n]
            for t in args.threads:
                with blas_threads(t):
                    cells += latency_ms(partial(small.search, k=10), lat_q[:200])
            row(*cells)
            del small
    return truth


def sweep(
    index: VectorIndex,
    settings: list[dict[str, int]],
    q: np.ndarray,
    truth: list[list[str]],
    lat_q: np.ndarray,
    threads: list[int],
) -> None:
    heads = list(settings[0])
    print(
        "| "
        + " | ".join(heads)
        + " | recall@10 | "
        + " | ".join(f"p50 ms {t}T | p99 ms {t}T" for t in threads)
        + " |"
    )
    print("|" + "---|" * (len(heads) + 1 + 2 * len(threads)))
    for s in settings:
        for k, v in s.items():
            setattr(index, k, v)
        index.threads = None  # type: ignore[attr-defined]
        got, _ = index.search(q, 10)
        cells: list[object] = [*s.values(), recall_at(got, truth, 10)]
        for t in threads:
            index.threads = t  # type: ignore[attr-defined]
            cells += list(latency_ms(lambda v: index.search(v, 10), lat_q))
        row(*cells)


def run_hnsw(
    args: argparse.Namespace,
    x: np.ndarray,
    q: np.ndarray,
    ids: list[str],
    truth: list[list[str]],
    lat_q: np.ndarray,
    root: Path,
) -> None:
    print(
        f"\n## hnsw (faiss IndexHNSWFlat), M = {args.M}, "
        f"ef_construction = {args.ef_construction} ({load()})\n"
    )
    ix = HNSWIndex(x.shape[1], M=args.M, ef_construction=args.ef_construction)
    secs, grew = build(ix, x, ids)
    print(f"build {secs:.1f} s ({len(x) / secs:.0f} vectors/s), RssAnon +{grew:.0f} MB, {load()}\n")
    sweep(ix, [{"ef_search": e} for e in args.ef_search], q, truth, lat_q, args.threads)
    ix.ef_search = args.saved_ef
    saved, disk = save_timed(ix, root, "hnsw")
    del ix
    report_load(root, "hnsw", lat_q, saved, disk)


def run_ivfpq(
    args: argparse.Namespace,
    x: np.ndarray,
    q: np.ndarray,
    ids: list[str],
    truth: list[list[str]],
    lat_q: np.ndarray,
    root: Path,
) -> None:
    print(
        f"\n## ivfpq (faiss IndexIVFPQ + exact re-rank), nlist = {args.nlist}, m = {args.m}, "
        f"nbits = 8 ({load()})\n"
    )
    ix = IVFPQIndex(x.shape[1], nlist=args.nlist, m=args.m)
    secs, grew = build(ix, x, ids)
    how = f"train on {ix.train_size} + add" if ix.trained else "NOT TRAINED: too few vectors, exact"
    print(f"build ({how}) {secs:.1f} s, RssAnon +{grew:.0f} MB, {load()}\n")
    settings = [{"nprobe": p, "refine": r} for p in args.nprobe for r in args.refine]
    sweep(ix, settings, q, truth, lat_q, args.threads)
    ix.nprobe, ix.refine = args.saved_nprobe, args.saved_refine
    saved, disk = save_timed(ix, root, "ivfpq")
    del ix
    report_load(root, "ivfpq", lat_q, saved, disk)


def save_timed(index: VectorIndex, root: Path, name: str) -> tuple[float, float]:
    """Save; (seconds, MB on disk)."""
    t0 = time.perf_counter()
    index.save(root / name)
    return time.perf_counter() - t0, du_mb(root / name)


def report_load(root: Path, name: str, lat_q: np.ndarray, saved: float, disk: float) -> None:
    """Memory-mapped load of a saved index (the built one already freed): time, memory growth."""
    gc.collect()
    r0, f0, t0 = rss_mb(), rss_mb("RssFile"), time.perf_counter()
    back = open_index(root / name, mmap=True)
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    for v in lat_q:
        back.search(v, 10)
    per = (time.perf_counter() - t0) / len(lat_q) * 1e3
    print(
        f"\nsave {saved:.1f} s, {disk:.0f} MB on disk; mmap load (size + SHA-256 + validation) "
        f"{loaded:.1f} s; after it and {len(lat_q)} cold queries ({per:.2f} ms each, saved "
        f"settings) RssAnon +{rss_mb() - r0:.0f} MB, RssFile +{rss_mb('RssFile') - f0:.0f} MB"
    )
    del back
    shutil.rmtree(root / name)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
        fam = next(
            (
                line.split(":", 1)[1].strip()
                for line in out.splitlines()
                if line.startswith("CPU family")
            ),
            "?",
        )
    except (OSError, StopIteration):
        model, fam = platform.processor(), "?"
    return f"{model} (family {fam}), {os.cpu_count()} CPUs"


def main() -> None:
    def ints(s: str) -> list[int]:
        return [int(v) for v in s.split(",")]

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--centres", type=int, default=4000)
    p.add_argument("--queries", type=int, default=1000, help="recall queries (batched)")
    p.add_argument("--latency-queries", type=int, default=300)
    p.add_argument("--exact-queries", type=int, default=30, help="batch-1 queries timed on exact")
    p.add_argument("--exact-sizes", type=ints, default=ints("10000,25000,50000,100000,200000"))
    p.add_argument("--threads", type=ints, default=ints("2,1"))
    p.add_argument("--backends", default="exact,hnsw,ivfpq")
    p.add_argument("--M", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=128)
    p.add_argument("--ef-search", type=ints, default=ints("64,128,256,512"))
    p.add_argument("--nlist", type=int, default=1024)
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--nprobe", type=ints, default=ints("16,32,64"))
    p.add_argument("--refine", type=ints, default=ints("30,100"))
    p.add_argument("--saved-ef", type=int, default=128, help="ef_search saved (load timing)")
    p.add_argument("--saved-nprobe", type=int, default=32)
    p.add_argument("--saved-refine", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift", type=float, default=0.0, help="query shift (modality gap)")
    p.add_argument("--tmp", default=None, help="where to save indexes (default: a temp dir)")
    args = p.parse_args()

    print(f"# bench_index: {' '.join(sys.argv[1:]) or '(defaults)'}")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}")
    t0 = time.perf_counter()
    x, q = mixture(
        args.n, args.queries + args.latency_queries, args.dim, args.centres, args.seed, args.shift
    )
    q, lat_q = q[: args.queries], q[args.queries :]
    ids = [str(i) for i in range(args.n)]
    print(f"data: {args.n} x {args.dim}, {args.centres} centres, {time.perf_counter() - t0:.1f} s")
    backends = args.backends.split(",")
    root = Path(tempfile.mkdtemp(prefix="bench_index_", dir=args.tmp))
    try:
        truth = run_exact(args, x, q, ids, lat_q, root)
        if "hnsw" in backends:
            run_hnsw(args, x, q, ids, truth, lat_q, root)
        if "ivfpq" in backends:
            run_ivfpq(args, x, q, ids, truth, lat_q, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s ({load()})")


if __name__ == "__main__":
    main()
