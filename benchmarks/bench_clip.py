"""Hugging Face CLIP embeddings, one model, one process: transformers eager vs Hugging Face
Optimum's ONNX Runtime model (``ORTModelForZeroShotImageClassification``) vs mmfast's
``Retriever``, image and text embeddings timed separately.

    python benchmarks/bench_clip.py [--threads 2] [--repeats 30] [--repeats-32 5]

The model is a CLIPModel with openai/clip-vit-base-patch32's shapes (ViT-B/32 at 224 + the
12-layer 512-wide text Transformer, projection 512; random weights, a CLIP-style tokenizer
trained on the shapes captions; no hub here), built with ``build_clip`` and saved with
save_pretrained; all three engines load that directory. Each engine goes from decoded photos
(uint8 arrays of several aspect ratios) or strings to L2-normalised (B, 512) embeddings, its
own preprocessing included:

- transformers eager: its ``CLIPProcessor`` (the slow, PIL-backed CLIPImageProcessor: the fast
  one needs torchvision; the fast tokenizer), ``get_image_features`` / ``get_text_features``
  under ``torch.inference_mode()``, then L2-normalised; default attention (SDPA);
- Optimum: ``ORTModelForZeroShotImageClassification`` (export=True, CPU defaults, the same
  intra-op thread count), the same processor with numpy outputs. optimum-onnx exports a
  transformers CLIPModel only as the joint graph (feature-extraction and
  zero-shot-image-classification are the same graph: pixel_values, input_ids and
  attention_mask in; logits_per_image, logits_per_text, text_embeds, image_embeds out), so an
  image embedding needs a text input and a text embedding an image: the smallest ones the
  graph runs with are given, prepared once outside the timing (the empty text, [bos, eos];
  one 224 x 224 zero image, since the graph takes neither an empty batch nor another size).
  Its text embeddings therefore pay for one image through the vision tower on every call;
- mmfast: ``Retriever.load(bundle, threads=N)``, ``embed_images`` / ``embed_texts`` (two
  graphs, one per tower, normalised in-graph).

Embeddings are checked first (batch 1 and 32, images and texts): every engine's cosine with
transformers' must be at least 1 - 1e-4. Timings: batch 1, per-call latency p50 / p90 over
--repeats calls (the i-th call embeds the i-th photo / text), the engines interleaved, their
order rotated every round and a short pause before each call (so no engine runs while
another's threads still spin); batch 32, images/s or texts/s, median of --repeats-32 calls,
interleaved the same way. mmfast's split: preprocessing (``pixels`` / ``tokens``) and the
graph run timed alone on the same inputs (medians). Image-tower FLOPs are counted from the
config (2 per multiply-add) and set against the fp32 peak measured in the run: ONNX Runtime's
MatMul (MLAS) of the tower's widest product at batch 32, (32 * 50, 768) x (768, 3072).
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
from bench_hf import photos, timed

# Captions of several lengths: shapes captions (the tokenizer's own words: 8-20 tokens) and
# everyday sentences (mostly sub-word pieces for this tokenizer: up to the 77-token limit).
SENTENCES = [
    "a dog",
    "A man riding a wave on top of a surfboard.",
    "Two cats sleeping on a red couch next to a remote control.",
    "a bowl of soup with a spoon",
    "A kitchen with wooden cabinets, a white refrigerator and a window over the sink.",
    "an astronaut in a white suit holding a helmet in front of a flag",
    "A cup of coffee with latte art on a saucer.",
    "The rocket lifts off from the launch pad at night, lighting up the clouds of smoke around "
    "it while the crowd watches from a safe distance across the water.",
    "black and white photo of a man with a camera on a tripod",
    "a tabby cat looking at the camera",
    "People walking down a busy city street lined with shops, parked cars and tall buildings "
    "on a rainy afternoon in late autumn.",
    "a plate of food",
    "A small boat floating on a calm lake surrounded by mountains.",
    "a close-up of a red apple",
    "Three children playing football in a park while their parents sit on a bench.",
    "a train",
]


def captions_list(n: int) -> list[str]:
    """n texts: shapes captions and everyday sentences, alternating."""
    from mmfast_export.shapes import ShapesConfig, captions, sample_scene

    cfg = ShapesConfig()
    shapes = [c for i in range(n) for c in captions(sample_scene(cfg, i), cfg.size)]
    return [SENTENCES[i // 2 % len(SENTENCES)] if i % 2 else shapes[i] for i in range(n)]


def vision_gflop(vc: Any) -> float:
    """GFLOP of one image through a CLIP vision tower (2 per multiply-add): patch embedding,
    per layer the q, k, v, o projections, the two attention products and the MLP."""
    d, f, n_layers = vc.hidden_size, vc.intermediate_size, vc.num_hidden_layers
    patches = (vc.image_size // vc.patch_size) ** 2
    n = patches + 1  # + the class token
    embed = patches * 3 * vc.patch_size**2 * d
    layer = 4 * n * d * d + 2 * n * n * d + 2 * n * d * f
    return 2 * (embed + n_layers * layer) / 1e9


def text_gflop(tc: Any, tokens: int) -> float:
    """GFLOP of one text of `tokens` tokens through a CLIP text tower (2 per multiply-add)."""
    d, f, n = tc.hidden_size, tc.intermediate_size, tokens
    return 2 * tc.num_hidden_layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * f) / 1e9


def ort_matmul_peak(threads: int, m: int, k: int, n: int, repeats: int = 15) -> float:
    """GFLOP/s of ONNX Runtime's fp32 MatMul (MLAS) on an (m, k) x (k, n) product, `threads`
    intra-op threads: the practical peak of this machine for the graphs compared here."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((m, k), dtype=np.float32)
    s.run(None, {"a": a})
    times = [timed(lambda: s.run(None, {"a": a})) for _ in range(repeats)]
    return 2 * m * k * n / statistics.median(times) / 1e9


def interleaved(
    engines: dict[str, Callable[[Any], np.ndarray]],
    inputs: Callable[[int], Any],
    rounds: int,
    pause: float,
) -> dict[str, list[float]]:
    """Seconds per call of every engine on inputs(i), round i; the order rotates each round and
    every call waits `pause` s first (another engine's threads may still be spinning)."""
    names = list(engines)
    out: dict[str, list[float]] = {n: [] for n in names}
    for i in range(rounds):
        x = inputs(i)
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            time.sleep(pause)
            out[name].append(timed(lambda name=name: engines[name](x)))
    return out


def check(engines: dict[str, Callable[[Any], np.ndarray]], x: Any, what: str) -> float:
    """Smallest cosine of any engine's embeddings with transformers' on x; exits below
    1 - 1e-4."""
    ref = engines["transformers eager"](x)
    worst = 1.0
    for name, fn in engines.items():
        got = fn(x)
        if got.shape != ref.shape:
            sys.exit(f"{what}: {name} gives {got.shape}, transformers {ref.shape}")
        cos = np.sum(got * ref, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
        if cos.min() < 1 - 1e-4:
            sys.exit(f"{what}: {name}'s embedding {int(cos.argmin())} has cosine {cos.min():.6f}")
        worst = min(worst, float(cos.min()))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", default="/work/bench-hf", help="model, bundle, Optimum export")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30, help="batch-1 calls per engine")
    p.add_argument("--repeats-32", type=int, default=5, help="batch-32 calls per engine")
    p.add_argument("--pause", type=float, default=0.05, help="seconds before each timed call")
    a = p.parse_args()
    alloc = tune_allocator()
    import transformers

    transformers.logging.set_verbosity_error()  # the slow-processor notice
    import onnxruntime as ort
    import torch
    import transformers as tf

    import mmfast
    from mmfast_export import export
    from mmfast_export.hf.build_clip import build_clip

    torch.set_num_threads(a.threads)
    work = Path(a.workdir)
    model_dir, bundle = work / "clip-b32", work / "clip-b32-bundle"
    if not (model_dir / "config.json").is_file():
        print(f"building CLIP base in {model_dir} ...", flush=True)
        build_clip(model_dir, "base")
    if not (bundle / "manifest.json").is_file():
        print(f"mmfast export: {timed(lambda: export(model_dir, bundle)):.0f} s", flush=True)

    model = tf.CLIPModel.from_pretrained(model_dir).eval()
    proc = tf.CLIPProcessor.from_pretrained(model_dir)
    max_len = model.config.text_config.max_position_embeddings
    text_kw = {"padding": True, "truncation": True, "max_length": max_len}
    ret = mmfast.Retriever.load(bundle, threads=a.threads)

    def unit(x: torch.Tensor) -> np.ndarray:
        return (x / x.norm(dim=-1, keepdim=True)).numpy()

    def eager_images(images: list[np.ndarray]) -> np.ndarray:
        px = proc(images=images, return_tensors="pt").pixel_values
        with torch.inference_mode():
            return unit(model.get_image_features(pixel_values=px))

    def eager_texts(texts: list[str]) -> np.ndarray:
        t = proc(text=texts, return_tensors="pt", **text_kw)
        with torch.inference_mode():
            return unit(model.get_text_features(**t))

    image_engines: dict[str, Callable[[Any], np.ndarray]] = {"transformers eager": eager_images}
    text_engines: dict[str, Callable[[Any], np.ndarray]] = {"transformers eager": eager_texts}
    zero_shot: Any = None
    try:
        from optimum.onnxruntime import ORTModelForZeroShotImageClassification as zero_shot
    except ImportError:
        print("optimum-onnx is not installed here: its column is skipped", flush=True)
    if zero_shot is not None:
        opt_dir = work / "clip-b32-optimum"
        if not (opt_dir / "config.json").is_file():
            t0 = time.perf_counter()
            m = zero_shot.from_pretrained(model_dir, export=True)
            m.save_pretrained(opt_dir)
            print(f"optimum export: {time.perf_counter() - t0:.0f} s", flush=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        opt = zero_shot.from_pretrained(opt_dir, session_options=so)
        # the other tower's input, the smallest the joint graph runs with, made once
        no_text = dict(proc(text=[""], return_tensors="np"))  # (1, 2): [bos, eos]
        size = model.config.vision_config.image_size
        no_image = np.zeros((1, 3, size, size), np.float32)

        def optimum_images(images: list[np.ndarray]) -> np.ndarray:
            px = proc(images=images, return_tensors="np").pixel_values
            return np.asarray(opt(pixel_values=px, **no_text).image_embeds)

        def optimum_texts(texts: list[str]) -> np.ndarray:
            t = dict(proc(text=texts, return_tensors="np", **text_kw))
            return np.asarray(opt(pixel_values=no_image, **t).text_embeds)

        image_engines["optimum ORT"] = optimum_images
        text_engines["optimum ORT"] = optimum_texts
    image_engines["mmfast"] = lambda images: ret.embed_images(images)["image_embedding"]
    text_engines["mmfast"] = lambda texts: ret.embed_texts(texts)["text_embedding"]

    import PIL

    print(
        f"mmfast {mmfast.__version__} ({Path(mmfast.__file__).parent}), torch "
        f"{torch.__version__}, transformers {tf.__version__}, onnxruntime {ort.__version__}, "
        f"Pillow {PIL.__version__}; {a.threads} threads; {alloc}",
        flush=True,
    )
    n32 = 32
    images, texts = photos(n32), captions_list(n32)
    lengths = [len(ret.tokenizer.encode(t, max_length=max_len)) for t in texts]
    sizes = sorted({im.shape[:2] for im in images})
    print(
        f"{n32} photos, {len(sizes)} sizes from {sizes[0]} to {sizes[-1]}; {n32} texts, "
        f"{min(lengths)}-{max(lengths)} tokens (mean {np.mean(lengths):.1f})"
    )

    worst = min(
        check(image_engines, images[:1], "images, batch 1"),
        check(image_engines, images, f"images, batch {n32}"),
        check(text_engines, texts[:1], "texts, batch 1"),
        check(text_engines, texts, f"texts, batch {n32}"),
    )
    print(f"embeddings agree: smallest cosine with transformers' {worst:.8f} (>= 1 - 1e-4)")

    peak = ort_matmul_peak(a.threads, 32 * 50, 768, 3072)
    img_gflop = vision_gflop(model.config.vision_config)
    print(
        f"fp32 peak (ORT MatMul 1600x768 . 768x3072, {a.threads} threads): {peak:.0f} GFLOP/s; "
        f"image tower {img_gflop:.2f} GFLOP per image"
    )

    results = {}
    for kind, engines, xs in (("images", image_engines, images), ("texts", text_engines, texts)):
        lat = interleaved(engines, lambda i, xs=xs: [xs[i % len(xs)]], a.repeats, a.pause)
        thr = interleaved(engines, lambda i, xs=xs: xs, a.repeats_32, a.pause)
        results[kind] = (lat, thr)

    # mmfast's split: preprocessing and the graph run, each alone
    split = {}
    for label, xs in (("b1", images[:1]), (f"b{n32}", images)):
        n = a.repeats if label == "b1" else a.repeats_32
        pre = [timed(lambda xs=xs: ret.pixels(xs)) for _ in range(n)]
        px = ret.pixels(xs)
        run = [timed(lambda px=px: ret.run("image_tower.onnx", {"images": px})) for _ in range(n)]
        hf = [timed(lambda xs=xs: proc(images=xs, return_tensors="np")) for _ in range(n)]
        split[("images", label)] = [statistics.median(v) * 1e3 for v in (pre, run, hf)]
    for label, xs in (("b1", texts[:1]), (f"b{n32}", texts)):
        n = a.repeats if label == "b1" else a.repeats_32
        pre = [timed(lambda xs=xs: ret.tokens(xs, max_len)) for _ in range(n)]
        tok = ret.tokens(xs, max_len)
        run = [timed(lambda tok=tok: ret.run("text_tower.onnx", {"tokens": tok})) for _ in range(n)]
        hf = [timed(lambda xs=xs: proc(text=xs, return_tensors="np", **text_kw)) for _ in range(n)]
        split[("texts", label)] = [statistics.median(v) * 1e3 for v in (pre, run, hf)]

    for kind, (lat, thr) in results.items():
        unit_name = "img/s" if kind == "images" else "txt/s"
        print(f"\n{kind}: batch 1 over {a.repeats} calls, batch {n32} median of {a.repeats_32}")
        print(
            f"{'engine':20} {'b1 p50 ms':>10} {'b1 p90 ms':>10} {'b32 ' + unit_name:>10} "
            f"{'mmfast/this b1':>15} {'mmfast/this b32':>16}"
        )
        m1 = statistics.median(lat["mmfast"])
        m32 = n32 / statistics.median(thr["mmfast"])
        for name in lat:
            p50 = statistics.median(lat[name])
            p90 = float(np.percentile(lat[name], 90))
            t32 = n32 / statistics.median(thr[name])
            print(
                f"{name:20} {p50 * 1e3:10.1f} {p90 * 1e3:10.1f} {t32:10.1f} {p50 / m1:14.2f}x "
                f"{m32 / t32:15.2f}x"
            )
        for label in ("b1", f"b{n32}"):
            pre, run, hf = split[(kind, label)]
            what = "pixels" if kind == "images" else "tokens"
            line = f"mmfast {label}: {what} {pre:.2f} ms, graph {run:.2f} ms"
            if kind == "images":
                b = 1 if label == "b1" else n32
                gf = img_gflop * b / (run * 1e-3)
                line += f" ({gf:.0f} GFLOP/s, {100 * gf / peak:.0f}% of peak)"
                call = (m1 if label == "b1" else n32 / m32) * 1e3
                whole = img_gflop * b / (call * 1e-3)
                line += f"; whole call {whole:.0f} GFLOP/s ({100 * whole / peak:.0f}%)"
            else:
                b = 1 if label == "b1" else n32
                tokens = ret.tokens(texts[:b], max_len)
                gf = text_gflop(model.config.text_config, tokens.shape[1]) * b / (run * 1e-3)
                line += f" ({tokens.shape[1]} tokens padded: {gf:.0f} GFLOP/s)"
            print(f"{line}; HF processor {hf:.2f} ms")


if __name__ == "__main__":
    main()
