"""End-to-end latency: PyTorch eager vs mmfast (ONNX Runtime, CPU), same model, same images,
same process, same thread count.

    python benchmarks/bench_e2e.py --runs runs/ --bundles bundles/ --data data/shapes

Expects trained runs (``mmfast train``) under RUNS/{caption_lstm,retrieval,vqa} and their
exports (``mmfast export``) under BUNDLES/ with the same names. Prints, per pipeline:
  - captioning (greedy and beam 4, 20 tokens max): per-image latency at batch 1 (p50/p90/p99)
    and throughput at batch 32, with the per-stage split (preprocess, encoder, decode, post);
  - retrieval: text-query latency over 10k and 100k indexed images (the index beyond the real
    test images is filled with random unit vectors: search cost does not depend on content);
  - VQA: per-question latency (image encoder + answer head).
Both sides produce the same tokens / rankings / answers (checked before timing).
Every batch-1 call's latency goes into a picture of the distributions (p50 / p90 / p99 marked),
benchmarks/plots/e2e_latency.png unless --plot names another file (--plot none: no picture).

Threads: both sides get --threads intra-op threads. ORT's spinning is off (mmfast.session):
on a 2-core machine spinning workers fight the Python decode loop between steps. torch runs
with OMP_WAIT_POLICY=PASSIVE for the same reason (set before torch loads).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(__file__))
from _common import tune_allocator
from _plots import PLOTS, can_plot, latency_distribution

ALLOCATOR = tune_allocator()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mmfast import decoding as decoding_np  # noqa: E402
from mmfast.captioner import Captioner  # noqa: E402
from mmfast.preprocess import PreprocessConfig, load_rgb, preprocess_batch  # noqa: E402
from mmfast.retriever import Retriever  # noqa: E402
from mmfast.vqa import VQA  # noqa: E402
from mmfast_export import decoding  # noqa: E402
from mmfast_export.runs import load_run  # noqa: E402


def timed(fn: Callable[[], object], n: int) -> np.ndarray:
    fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return np.array(out) * 1e3


# pipeline -> implementation -> every timed call's ms (the latency picture)
SAMPLES: dict[str, dict[str, np.ndarray]] = {}
TORCH, MMFAST = "PyTorch eager", "mmfast (ORT)"


def pct(a: np.ndarray) -> str:
    return f"{np.percentile(a, 50):7.2f} {np.percentile(a, 90):7.2f} {np.percentile(a, 99):7.2f}"


class Stages:
    """Accumulates per-stage wall time (ms) for the last call."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def add(self, name: str, t0: float) -> float:
        now = time.perf_counter()
        self.t[name] = self.t.get(name, 0.0) + (now - t0) * 1e3
        return now


def torch_caption(model, prep, images, beam, stages=None):
    s = stages or Stages()
    t = time.perf_counter()
    px = torch.from_numpy(preprocess_batch(images, prep))
    t = s.add("preprocess", t)
    with torch.no_grad():
        state = model.encode(px)
        t = s.add("encoder", t)
        if beam == 1:
            r = decoding.greedy(model, state, 20)
        else:
            r = decoding.beam_search(model, state, 20, beam=beam)
    t = s.add("decode", t)
    toks = r.tokens
    s.add("post", t)
    return toks


def mm_caption(cap: Captioner, images, beam, stages=None):
    s = stages or Stages()
    t = time.perf_counter()
    px = cap.pixels(images)
    t = s.add("preprocess", t)
    state = cap.encode(px)
    t = s.add("encoder", t)
    if beam == 1:
        r = decoding_np.greedy(cap._step, state, 20, special_tokens=cap.special_tokens)
    else:
        constant = frozenset(state) - {name for name, _ in cap._state_io}
        r = decoding_np.beam_search(
            cap._step, state, 20, beam, constant=constant, special_tokens=cap.special_tokens
        )
    t = s.add("decode", t)
    toks = [cap.tokenizer.decode(x) for x in r.tokens]
    s.add("post", t)
    return r.tokens, toks


def bench_caption(run: Path, bundle: Path, images: list, threads: int, n: int) -> None:
    model, cfg, _ = load_run(run)
    prep = PreprocessConfig.from_dict(cfg["preprocess"])
    cap = Captioner.load(bundle, threads=threads)
    print(f"\n## captioning ({cfg['model']['kind']}), max 20 tokens")
    print("| decode | batch | metric | PyTorch eager | mmfast (ORT) | speedup |")
    print("|---|---|---|---|---|---|")
    for beam in (1, 4):
        ok = mm_caption(cap, images[:8], beam)[0] == torch_caption(model, prep, images[:8], beam)
        assert ok, "mmfast and PyTorch captions differ"
        # batch 1: one image per call, cycling through the set
        it_t = iter(range(10**9))
        t_torch = timed(
            lambda: torch_caption(model, prep, [images[next(it_t) % len(images)]], beam), n
        )
        it_m = iter(range(10**9))
        t_mm = timed(lambda: mm_caption(cap, [images[next(it_m) % len(images)]], beam), n)
        name = "greedy" if beam == 1 else f"beam {beam}"
        SAMPLES[f"caption, 1 image, {name}"] = {TORCH: t_torch, MMFAST: t_mm}
        print(
            f"| {name} | 1 | ms p50 p90 p99 | {pct(t_torch)} | {pct(t_mm)} "
            f"| {np.median(t_torch) / np.median(t_mm):.2f}x |"
        )
        batch = images[:32]
        st_t, st_m = Stages(), Stages()
        reps = max(3, n // 10)
        tt = timed(lambda: torch_caption(model, prep, batch, beam, st_t), reps)
        tm = timed(lambda: mm_caption(cap, batch, beam, st_m), reps)
        print(
            f"| {name} | 32 | images/s | {32e3 / np.median(tt):.1f} | {32e3 / np.median(tm):.1f} "
            f"| {np.median(tt) / np.median(tm):.2f}x |"
        )
        calls = reps + 1
        split_t = ", ".join(f"{k} {v / calls:.1f}" for k, v in st_t.t.items())
        split_m = ", ".join(f"{k} {v / calls:.1f}" for k, v in st_m.t.items())
        print(f"|  | 32 | stages ms | {split_t} | {split_m} | |")


def bench_retrieval(run: Path, bundle: Path, images: list, texts: list, threads: int, n: int):
    model, _, tok = load_run(run)
    r = Retriever.load(bundle, threads=threads)
    r.add_images(images, ids=[str(i) for i in range(len(images))])
    real = np.concatenate(r.index._store.parts())  # (n, dim) the real images' embeddings
    print("\n## retrieval: one text query, top 10 (cosine)")
    print("| indexed images | PyTorch eager ms p50 p90 p99 | mmfast ms p50 p90 p99 | speedup |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    emb = real
    for total in (10_000, 100_000):
        # the index beyond the real images: random unit vectors (search cost ignores content)
        fill = rng.standard_normal((total - len(emb), real.shape[1])).astype(np.float32)
        fill /= np.linalg.norm(fill, axis=1, keepdims=True)
        r.index.add(fill, ids=[str(i) for i in range(len(emb), total)])
        emb = np.concatenate([emb, fill])
        temb = torch.from_numpy(emb)
        it = iter(range(10**9))

        def torch_query() -> list[int]:
            ids = torch.tensor([tok.encode(texts[next(it) % len(texts)])])
            with torch.no_grad():
                t, _, _ = model.encode_text(ids)
                return (t @ temb.T)[0].topk(10).indices.tolist()

        it2 = iter(range(10**9))
        q0 = texts[0]
        with torch.no_grad():
            want = (model.encode_text(torch.tensor([tok.encode(q0)]))[0] @ temb.T)[0]
        assert r.search(q0, k=10)[0] == [str(i) for i in want.topk(10).indices.tolist()]
        t_t = timed(torch_query, n)
        t_m = timed(lambda: r.search(texts[next(it2) % len(texts)], k=10), n)
        SAMPLES[f"text search, {total:,} images"] = {TORCH: t_t, MMFAST: t_m}
        print(f"| {total:,} | {pct(t_t)} | {pct(t_m)} | {np.median(t_t) / np.median(t_m):.2f}x |")


def bench_vqa(run: Path, bundle: Path, images: list, questions: list, threads: int, n: int):
    model, cfg, tok = load_run(run)
    prep = PreprocessConfig.from_dict(cfg["preprocess"])
    v = VQA.load(bundle, threads=threads)
    print("\n## VQA: one image, one question")
    it = iter(range(10**9))

    def torch_ask():
        k = next(it)
        im, q = images[k % len(images)], questions[k % len(questions)]
        with torch.no_grad():
            reg = model.encode_image(torch.from_numpy(preprocess_batch([im], prep)))
            return int(model.answer(reg, torch.tensor([tok.encode(q)]))[0].argmax())

    it2 = iter(range(10**9))

    def mm_ask():
        k = next(it2)
        return v.answer(images[k % len(images)], questions[k % len(questions)])

    t_t, t_m = timed(torch_ask, n), timed(mm_ask, n)
    SAMPLES["VQA, one question"] = {TORCH: t_t, MMFAST: t_m}
    print("| PyTorch eager ms p50 p90 p99 | mmfast ms p50 p90 p99 | speedup |")
    print("|---|---|---|")
    print(f"| {pct(t_t)} | {pct(t_m)} | {np.median(t_t) / np.median(t_m):.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--bundles", default="bundles")
    ap.add_argument("--data", default="data/shapes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=50, help="timed calls per measurement")
    ap.add_argument("--only", nargs="*", choices=["caption", "retrieval", "vqa"])
    ap.add_argument(
        "--plot", default=str(PLOTS / "e2e_latency.png"), help="latency picture (none: skip)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import json

    caps = json.loads((Path(args.data) / "captions_test.json").read_text())
    root = Path(args.data) / "images"
    files = [root / im["file_name"] for im in caps["images"][:64]]
    images = [load_rgb(p) for p in files]
    texts = [a["caption"] for a in caps["annotations"][:64]]
    print(
        f"# bench_e2e  {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {args.threads} "
        f"threads, torch {torch.__version__}; {ALLOCATOR}"
    )
    runs, bundles = Path(args.runs), Path(args.bundles)
    only = set(args.only or ["caption", "retrieval", "vqa"])
    if "caption" in only:
        bench_caption(runs / "caption_lstm", bundles / "caption_lstm", images, args.threads, args.n)
    if "retrieval" in only:
        bench_retrieval(
            runs / "retrieval", bundles / "retrieval", images, texts, args.threads, args.n
        )
    if "vqa" in only:
        vq = json.loads((Path(args.data) / "vqa_test.json").read_text())
        qs = [q["question"] for q in vq["questions"][:64]] if "questions" in vq else texts
        bench_vqa(runs / "vqa", bundles / "vqa", images, qs, args.threads, args.n)
    if args.plot != "none" and SAMPLES and can_plot():
        title = (
            f"End-to-end latency per call, {args.threads} threads, {args.n} calls "
            f"({time.strftime('%Y-%m-%d', time.gmtime())})"
        )
        latency_distribution(SAMPLES, Path(args.plot), title)


if __name__ == "__main__":
    main()
