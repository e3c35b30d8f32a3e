"""Hugging Face VQA models, one model per run, one process: transformers eager vs mmfast's
``VQA``, batch 1 latency and batch 32 throughput, answers checked equal first.

    python benchmarks/bench_vqa.py --model vilt [--threads 2] [--repeats 20] [--repeats-32 3]
    python benchmarks/bench_vqa.py --model blip [--beams 1]

Models (base-size configs, random weights; no hub here), built once into --workdir with
save_pretrained and exported with ``mmfast export``; every engine loads that directory:
- ``vilt``: ``ViltForQuestionAnswering`` with dandelin/vilt-b32-finetuned-vqa's shapes
  (ViLT-B/32, 12 layers of 768, 384-pixel shorter side, 40 text positions);
- ``blip``: ``BlipForQuestionAnswering`` with Salesforce/blip-vqa-base's shapes (ViT-B/16 at
  384, BERT-base question encoder and answer decoder); answers generated greedily (or with
  --beams), at most --max-new-tokens tokens.

Hugging Face Optimum (optimum-onnx 0.1.0) exports neither ViLT nor BLIP (its
``exporters/onnx/model_configs.py`` registers no "vilt" or "blip" config), so it has no
column here.

Each engine goes from decoded photos (uint8 arrays of several aspect ratios) and question
strings to answers, its own preprocessing included:
- transformers eager: the model's processor (ViltProcessor / BlipProcessor: the slow,
  PIL-backed image processors, the fast tokenizer; ViLT's with truncation=True, as its 40
  text positions need and as mmfast cuts), the model's forward (ViLT: the argmax of
  the logits and their sigmoid) or ``generate`` under ``torch.inference_mode()``;
- mmfast: ``VQA.load(bundle, threads=N).answer_many``.

Checked first, on batch 1 and batch 32: ViLT, the same best answer and every top-5 score
within 1e-4 of transformers'; BLIP, answers identical to ``generate`` of each question alone
(transformers' batched ``generate`` attends to the padding of the shorter questions, mmfast
masks it; the count of batched answers that agree anyway is printed). Timings: batch 1, per-call
latency p50 / p90 over --repeats calls (the i-th call asks the i-th question about the i-th
photo), the engines interleaved, their order rotated every round, a short pause before each
call; batch 32, questions/s, median of --repeats-32 calls, interleaved the same way. ViLT's
FLOPs are counted from the config and the padded batch's tokens (2 per multiply-add) and set
against the fp32 peak measured in the run: ONNX Runtime's MatMul (MLAS) of (32 * 200, 768) x
(768, 3072).
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
from bench_clip import interleaved, ort_matmul_peak
from bench_hf import photos, timed

QUESTIONS = [
    "what is in the picture?",
    "How many people are there?",
    "what colour is the cup?",
    "Is there a cat on the sofa next to the window?",
    "what is the man holding in his right hand while he stands in front of the flag?",
    "is it raining?",
    "What animal is this?",
    "Where was this photo taken, indoors or outdoors, and what time of day does it look like?",
]


def questions(n: int) -> list[str]:
    return [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]


def vilt_gflop(cfg: Any, tokens: int) -> float:
    """GFLOP of one sequence of `tokens` (text + [CLS] + patches) through ViLT's encoder, plus
    the patch projection of its patches (2 per multiply-add)."""
    d, f, n = cfg.hidden_size, cfg.intermediate_size, tokens
    enc = 2 * cfg.num_hidden_layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * f)
    return (enc + 2 * n * 3 * cfg.patch_size**2 * d) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vilt", choices=["vilt", "blip"])
    p.add_argument("--workdir", default="/work/bench-hf", help="models and bundles")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20, help="batch-1 calls per engine")
    p.add_argument("--repeats-32", type=int, default=3, help="batch-32 calls per engine")
    p.add_argument("--pause", type=float, default=0.05, help="seconds before each timed call")
    p.add_argument("--beams", type=int, default=1, help="BLIP: beam size")
    p.add_argument("--max-new-tokens", type=int, default=10, help="BLIP: answer length limit")
    p.add_argument(
        "--plot", default=None, help="latency picture (default plots/vqa_<model>_latency.png)"
    )
    a = p.parse_args()
    alloc = tune_allocator()
    import transformers

    transformers.logging.set_verbosity_error()  # the slow-processor notice
    import onnxruntime as ort
    import torch
    import transformers as tf

    import mmfast
    from mmfast_export import export

    torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    model_dir, bundle = work / f"{a.model}-vqa-base", work / f"{a.model}-vqa-base-bundle"
    if not (model_dir / "config.json").is_file():
        print(f"building {a.model} VQA base in {model_dir} ...", flush=True)
        if a.model == "vilt":
            from mmfast_export.hf.build_vilt import build_vilt

            build_vilt(model_dir, "base")
        else:
            from mmfast_export.hf.build import build_blip_vqa

            build_blip_vqa(model_dir, "base")
    if not (bundle / "manifest.json").is_file():
        print(f"mmfast export: {timed(lambda: export(model_dir, bundle)):.0f} s", flush=True)
    vqa = mmfast.VQA.load(bundle, threads=a.threads)

    engines: dict[str, Callable[[Any], list[Any]]] = {}
    if a.model == "vilt":
        model = tf.ViltForQuestionAnswering.from_pretrained(model_dir).eval()
        proc = tf.ViltProcessor.from_pretrained(model_dir)

        def eager(batch: tuple[list[np.ndarray], list[str]]) -> list[Any]:
            images, qs = batch
            enc = proc(images=images, text=qs, return_tensors="pt", padding=True, truncation=True)
            with torch.inference_mode():
                s = torch.sigmoid(model(**enc).logits)
            top = s.topk(5, dim=-1)
            return [
                [(model.config.id2label[int(j)], float(v)) for v, j in zip(vs, js, strict=True)]
                for vs, js in zip(top.values, top.indices, strict=True)
            ]

        def ours(batch: tuple[list[np.ndarray], list[str]]) -> list[Any]:
            images, qs = batch
            out = vqa.answer_many(images, [[q] for q in qs], top_k=5)
            return [o[0].top for o in out]

    else:
        model = tf.BlipForQuestionAnswering.from_pretrained(model_dir).eval()
        proc = tf.BlipProcessor.from_pretrained(model_dir)
        gen_kw = {"num_beams": a.beams, "do_sample": False, "max_new_tokens": a.max_new_tokens}

        def eager(batch: tuple[list[np.ndarray], list[str]]) -> list[Any]:
            images, qs = batch
            enc = proc(images=images, text=qs, return_tensors="pt", padding=True)
            with torch.inference_mode():
                ids = model.generate(**enc, **gen_kw)
            return [proc.decode(row, skip_special_tokens=True) for row in ids]

        def ours(batch: tuple[list[np.ndarray], list[str]]) -> list[Any]:
            images, qs = batch
            out = vqa.answer_many(
                images, [[q] for q in qs], beam_size=a.beams, max_new_tokens=a.max_new_tokens
            )
            return [o[0].text for o in out]

    engines = {"transformers eager": eager, "mmfast": ours}

    import PIL

    print(
        f"mmfast {mmfast.__version__} ({Path(mmfast.__file__).parent}), torch "
        f"{torch.__version__}, transformers {tf.__version__}, onnxruntime {ort.__version__}, "
        f"Pillow {PIL.__version__}; {a.threads} threads; {alloc}",
        flush=True,
    )
    n32 = 32
    images, qs = photos(n32), questions(n32)
    sizes = sorted({im.shape[:2] for im in images})
    print(f"{n32} photos, {len(sizes)} sizes from {sizes[0]} to {sizes[-1]}; {n32} questions")

    # answers agree first
    for label, batch in (("batch 1", (images[:1], qs[:1])), (f"batch {n32}", (images, qs))):
        ref, got = eager(batch), ours(batch)
        if a.model == "vilt":
            worst = 0.0
            for r, g in zip(ref, got, strict=True):
                if r[0][0] != g[0][0]:
                    sys.exit(f"{label}: best answer {g[0][0]!r}, transformers {r[0][0]!r}")
                rs, gs = dict(r), dict(g)
                worst = max(worst, max(abs(rs[k] - gs.get(k, -1.0)) for k in rs))
            if worst > 1e-4:
                sys.exit(f"{label}: a top-5 score differs from transformers' by {worst:.3g}")
            print(f"{label}: same best answers, top-5 scores within {worst:.2g} of transformers'")
        else:
            # generate() on a padded batch attends to the shorter questions' padding (mmfast
            # masks it: README), so each answer is checked against generate() of its question
            # alone
            ims, qq = batch
            alone = [eager(([im], [q]))[0] for im, q in zip(ims, qq, strict=True)]
            if alone != got:
                bad = next(i for i, (r, g) in enumerate(zip(alone, got, strict=True)) if r != g)
                sys.exit(f"{label}: answer {bad} is {got[bad]!r}, transformers {alone[bad]!r}")
            same = sum(r == g for r, g in zip(ref, got, strict=True))
            print(
                f"{label}: answers identical to transformers' generate of each question alone "
                f"({got[:2]} ...); its padded-batch generate agrees on {same} of {len(got)}"
            )

    peak = ort_matmul_peak(a.threads, 32 * 200, 768, 3072)
    print(f"fp32 peak (ORT MatMul 6400x768 . 768x3072, {a.threads} threads): {peak:.0f} GFLOP/s")

    lat = interleaved(engines, lambda i: ([images[i % n32]], [qs[i % n32]]), a.repeats, a.pause)
    thr = interleaved(engines, lambda i: (images, qs), a.repeats_32, a.pause)

    print(f"\nbatch 1 over {a.repeats} calls, batch {n32} median of {a.repeats_32}")
    print(
        f"{'engine':20} {'b1 p50 ms':>10} {'b1 p90 ms':>10} {'b32 q/s':>10} "
        f"{'mmfast/this b1':>15} {'mmfast/this b32':>16}"
    )
    m1 = statistics.median(lat["mmfast"])
    m32 = n32 / statistics.median(thr["mmfast"])
    for name in engines:
        p50 = statistics.median(lat[name])
        p90 = float(np.percentile(lat[name], 90))
        t32 = n32 / statistics.median(thr[name])
        print(
            f"{name:20} {p50 * 1e3:10.1f} {p90 * 1e3:10.1f} {t32:10.2f} {p50 / m1:14.2f}x "
            f"{m32 / t32:15.2f}x"
        )
    plot = a.plot or str(PLOTS / f"vqa_{a.model}_latency.png")
    if plot != "none" and can_plot():
        ms = {name: [t * 1e3 for t in v] for name, v in lat.items()}
        title = (
            f"VQA ({a.model}), one question, per-call latency, {a.threads} threads, "
            f"{a.repeats} calls ({time.strftime('%Y-%m-%d', time.gmtime())})"
        )
        latency_distribution({f"{a.model}: 1 image, 1 question": ms}, Path(plot), title)
    if a.model == "vilt":
        cfg = model.config
        t_text = len(proc.tokenizer(qs[0]).input_ids)
        cfg_pre = vqa.preprocess_config
        from mmfast.preprocess import capped_size

        h, w = capped_size(images[0].shape[1], images[0].shape[0], cfg_pre)
        n1 = t_text + 1 + (h // cfg.patch_size) * (w // cfg.patch_size)
        gf1 = vilt_gflop(cfg, n1)
        print(
            f"mmfast b1 (photo 0, {n1} tokens, {gf1:.1f} GFLOP): "
            f"{gf1 / m1:.0f} GFLOP/s, {100 * gf1 / m1 / peak:.0f}% of peak"
        )


if __name__ == "__main__":
    main()
