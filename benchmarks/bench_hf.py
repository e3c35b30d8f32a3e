"""Hugging Face captioner, one model, one process: transformers eager ``generate`` vs Hugging
Face Optimum's ONNX Runtime model (``ORTModelForVision2Seq``) vs mmfast.

    python benchmarks/bench_hf.py [--model vit-gpt2|blip] [--size base] [--threads 2]

The model is a VisionEncoderDecoder (ViT-B/16 at 224 + GPT-2 124M for --size base; Optimum
takes it) or BLIP base (ViT-B/16 at 384 + a BERT-base decoder; Optimum does not) built from
configs with random weights (no hub here) and saved with save_pretrained; all three load that
directory. Each engine runs from decoded images (uint8 arrays) to token ids, its own
preprocessing included. Greedy and beam 4, 20 new tokens (<eos> is never likely for a random
model, so every step runs). Tokens are checked identical across the three before any timing.

Optimum runs with its defaults for CPU (``export=True``, use_cache=True: a decoder with past
KV, I/O binding off on CPU) and the same intra-op thread count as the others; optimum-onnx
pins transformers < 4.58, so run this in that environment (benchmarks/README.md). Without
optimum installed its column is skipped (said aloud).

Timings: batch 1, per-call latency p50 / p90 over --repeats calls, the engines interleaved;
batch 32, images/s, median of --repeats-32 calls. mmfast's per-stage split: preprocessing and
encoder timed alone on the same images, decoding = the rest of the call (medians).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import tune_allocator
from _plots import PLOTS, can_plot, latency_distribution


def photos(n: int) -> list[np.ndarray]:
    """n real photos (skimage.data) and crops of them, uint8 (H, W, 3)."""
    from skimage import data

    gray = data.camera()
    base = [
        data.astronaut(),
        data.coffee(),
        data.chelsea(),
        data.rocket(),
        np.stack([gray] * 3, -1),
    ]
    out = []
    for i in range(n):
        im = base[i % len(base)]
        k = i // len(base)
        h, w = im.shape[:2]
        out.append(np.ascontiguousarray(im[k * h // 40 : h - k * h // 50, k * w // 30 :]))
    return out


def strip(rows: list[list[int]], eos: int) -> list[list[int]]:
    out = []
    for r in rows:
        r = r[1:]
        out.append(r[: r.index(eos)] if eos in r else r)
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vit-gpt2", choices=["vit-gpt2", "blip"])
    p.add_argument("--size", default="base", choices=["tiny", "small", "base"])
    p.add_argument("--workdir", default=".bench-hf")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="batch-1 calls per engine")
    p.add_argument("--repeats-32", type=int, default=3, help="batch-32 calls per engine")
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--beams", default="1,4")
    p.add_argument(
        "--plot", default=None, help="latency picture (default plots/hf_<model>_latency.png; none)"
    )
    a = p.parse_args()
    alloc = tune_allocator()
    import transformers

    transformers.logging.set_verbosity_error()  # its max_length vs max_new_tokens notice
    import onnxruntime as ort
    import torch
    import transformers as tf

    import mmfast
    from mmfast import Captioner
    from mmfast_export import export
    from mmfast_export.hf.build import build_blip, build_vit_gpt2

    torch.set_num_threads(a.threads)
    work = Path(a.workdir) / a.size if a.model == "vit-gpt2" else Path(a.workdir) / f"blip-{a.size}"
    model_dir, bundle = work / "model", work / "bundle"
    if not (model_dir / "config.json").is_file():
        print(f"building {a.size} {a.model} in {model_dir} ...", flush=True)
        (build_vit_gpt2 if a.model == "vit-gpt2" else build_blip)(model_dir, a.size)
    if not (bundle / "manifest.json").is_file():
        t = timed(lambda: export(model_dir, bundle))
        print(f"mmfast export: {t:.0f} s", flush=True)

    if a.model == "vit-gpt2":
        model = tf.VisionEncoderDecoderModel.from_pretrained(model_dir).eval()
        eos = model.generation_config.eos_token_id
    else:  # BLIP's generate stops at [SEP]
        model = tf.BlipForConditionalGeneration.from_pretrained(model_dir).eval()
        eos = model.config.text_config.sep_token_id
    proc = tf.AutoImageProcessor.from_pretrained(model_dir)
    cap = Captioner.load(bundle, threads=a.threads)
    engines: dict[str, Callable[[list[np.ndarray], int], list[list[int]]]] = {}

    def hf_eager(images: list[np.ndarray], beams: int) -> list[list[int]]:
        px = proc(images=images, return_tensors="pt").pixel_values
        with torch.no_grad():
            out = model.generate(pixel_values=px, num_beams=beams, max_new_tokens=a.new_tokens)
        return strip(out.tolist(), eos)

    engines["transformers eager"] = hf_eager
    ort_vision2seq: Any = None
    try:
        from optimum.onnxruntime import ORTModelForVision2Seq as ort_vision2seq
    except ImportError:
        print("optimum-onnx is not installed here: its column is skipped", flush=True)
    if ort_vision2seq is not None and a.model != "vit-gpt2":
        # ORTModelForVision2Seq takes VisionEncoderDecoder and Pix2Struct models
        print(f"Optimum's ORTModelForVision2Seq does not take {a.model}: skipped", flush=True)
        ort_vision2seq = None
    if ort_vision2seq is not None:
        opt_dir = work / "optimum"
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        if not (opt_dir / "config.json").is_file():
            t0 = time.perf_counter()
            m = ort_vision2seq.from_pretrained(model_dir, export=True)
            m.save_pretrained(opt_dir)
            print(f"optimum export: {time.perf_counter() - t0:.0f} s", flush=True)
        opt = ort_vision2seq.from_pretrained(opt_dir, session_options=so, use_cache=True)

        def optimum(images: list[np.ndarray], beams: int) -> list[list[int]]:
            px = proc(images=images, return_tensors="pt").pixel_values
            out = opt.generate(pixel_values=px, num_beams=beams, max_new_tokens=a.new_tokens)
            return strip(out.tolist(), eos)

        engines["optimum ORT"] = optimum

    def mm(images: list[np.ndarray], beams: int) -> list[list[int]]:
        return [c.tokens for c in cap.caption(images, beam_size=beams, max_new_tokens=a.new_tokens)]

    engines["mmfast"] = mm
    print(
        f"mmfast {mmfast.__version__}, torch {torch.__version__}, transformers "
        f"{tf.__version__}, onnxruntime {ort.__version__}; {a.threads} threads; {alloc}",
        flush=True,
    )
    beams_list = [int(b) for b in a.beams.split(",")]
    one, many = photos(1), photos(32)
    samples: dict[str, dict[str, list[float]]] = {}  # the latency picture: every b1 call
    for beams in beams_list:
        # identical tokens first, on both batches
        for images in (one, many):
            results = {name: fn(images, beams) for name, fn in engines.items()}
            ref = results["transformers eager"]
            for name, got in results.items():
                if got != ref:
                    bad = next(i for i, (g, r) in enumerate(zip(got, ref, strict=True)) if g != r)
                    sys.exit(
                        f"beam {beams}, batch {len(images)}: {name} differs from "
                        f"transformers at image {bad}: {got[bad]} vs {ref[bad]}"
                    )
        lat: dict[str, list[float]] = {n: [] for n in engines}
        for _ in range(a.repeats):
            for name, fn in engines.items():
                lat[name].append(timed(lambda fn=fn: fn(one, beams)) * 1e3)
        thr: dict[str, list[float]] = {n: [] for n in engines}
        for _ in range(a.repeats_32):
            for name, fn in engines.items():
                thr[name].append(len(many) / timed(lambda fn=fn: fn(many, beams)))
        # mmfast's stages on batch 1 and 32
        stages = {}
        for label, images, n in (("b1", one, a.repeats), ("b32", many, a.repeats_32)):
            pre = [timed(lambda images=images: cap.pixels(images)) for _ in range(n)]
            px = cap.pixels(images)
            enc = [timed(lambda px=px: cap.encode(px)) for _ in range(n)]
            stages[label] = (statistics.median(pre) * 1e3, statistics.median(enc) * 1e3)
        name_b = "greedy" if beams == 1 else f"beam {beams}"
        samples[f"{a.model} {a.size}, 1 image, {name_b}, {a.new_tokens} tokens"] = lat
        print(f"\n{name_b}, {a.new_tokens} new tokens, tokens identical across engines")
        print(
            f"{'engine':20} {'b1 p50 ms':>10} {'b1 p90 ms':>10} {'b32 img/s':>10} "
            f"{'vs eager b1':>12} {'vs eager b32':>13}"
        )
        base1 = statistics.median(lat["transformers eager"])
        base32 = statistics.median(thr["transformers eager"])
        for name in engines:
            p50 = statistics.median(lat[name])
            p90 = float(np.percentile(lat[name], 90))
            t32 = statistics.median(thr[name])
            print(
                f"{name:20} {p50:10.1f} {p90:10.1f} {t32:10.2f} {base1 / p50:11.2f}x "
                f"{t32 / base32:12.2f}x"
            )
        if "optimum ORT" in engines:
            o1 = statistics.median(lat["optimum ORT"])
            o32 = statistics.median(thr["optimum ORT"])
            m1, m32 = statistics.median(lat["mmfast"]), statistics.median(thr["mmfast"])
            print(f"mmfast vs optimum: b1 {o1 / m1:.2f}x, b32 {m32 / o32:.2f}x")
        m1 = statistics.median(lat["mmfast"])
        m32 = 32 / statistics.median(thr["mmfast"]) * 1e3
        for label, total in (("b1", m1), ("b32", m32)):
            pre, enc = stages[label]
            print(
                f"mmfast stages {label}: preprocess {pre:.1f} ms, encoder {enc:.1f} ms, "
                f"decode + text {total - pre - enc:.1f} ms (of {total:.1f})"
            )
    plot = a.plot or str(PLOTS / f"hf_{a.model}_latency.png")
    if plot != "none" and can_plot():
        title = (
            f"Hugging Face captioner, per-call latency, {a.threads} threads, {a.repeats} calls "
            f"({time.strftime('%Y-%m-%d', time.gmtime())})"
        )
        latency_distribution(samples, Path(plot), title)


if __name__ == "__main__":
    main()
