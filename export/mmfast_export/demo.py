"""`mmfast demo`: the whole path on generated data, with what each step printed.

1. generate a shapes dataset;  2. train a captioner (LSTM + soft attention), a retriever and a
VQA model (small, CPU; reused from WORKDIR when already trained);  3. export each to an ONNX
bundle, validated against PyTorch;  4. with the torch-free runtime: caption test images,
search them by text, answer questions;  5. latency of PyTorch eager vs mmfast on the same
inputs;  6. bring your own model: a Hugging Face VisionEncoderDecoder (ViT + GPT-2) fine-tuned
with transformers for a couple of minutes, saved with save_pretrained, exported from that
directory and captioned by the same runtime, token for token as ``model.generate``;  7. the
same for a Hugging Face CLIP, trained contrastively for a minute: retrieval metrics on the test
split (the same as transformers' embeddings give) and a search.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

# as in `mmfast train`: idle OpenMP threads sleep (only effective before torch is imported)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

P = ParamSpec("P")
R = TypeVar("R")


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _ensure_data(work: Path, num_images: int) -> Path:
    from .shapes import ShapesConfig, write_dataset

    data = work / "data"
    if (data / "captions_test.json").is_file():
        print(f"reusing dataset {data}")
    else:
        t0 = time.time()
        write_dataset(ShapesConfig(num_images=num_images), data)
        print(
            f"generated {num_images} images with captions and questions in {data} "
            f"({time.time() - t0:.0f} s)"
        )
    return data


def _quiet(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run fn with its stdout captured; echo it only if fn fails."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            return fn(*args, **kwargs)
    except BaseException:
        print(buf.getvalue())
        raise


def _ensure_run(work: Path, data: Path, task: str, epochs: int) -> Path:
    from .train import TrainArgs, train

    run = work / "runs" / task
    if (run / "metrics.json").is_file():
        print(f"reusing trained {task} model {run}")
    else:
        t0 = time.time()
        # the per-epoch lines go to stderr, as with `mmfast train`
        train(TrainArgs(task, str(data), str(run), epochs=epochs, progress=False))
        print(f"trained {task} in {time.time() - t0:.0f} s")
    return run


def _ensure_bundle(work: Path, run: Path, task: str) -> Path:
    from .onnx_export import export_run

    bundle = work / "bundles" / task
    manifest_file = bundle / "manifest.json"
    if (
        manifest_file.is_file()
        and manifest_file.stat().st_mtime >= (run / "model.safetensors").stat().st_mtime
    ):
        print(f"reusing bundle {bundle}")
    else:
        # the exporter narrates every graph and warns about torchvision ops we never use
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")):
                logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger("torch").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            manifest = _quiet(export_run, run, bundle)
        worst = max(
            o["max_abs_err"]
            for checks in manifest["validation"].values()
            for chk in checks.values()
            for o in chk.values()
        )
        print(
            f"exported {task} -> {bundle} ({len(manifest['graphs'])} graphs, "
            f"ONNX Runtime vs PyTorch max abs error {worst:.1e})"
        )
    return bundle


def _median_ms(fn, n: int = 20) -> float:
    import numpy as np

    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mmfast demo", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default=".demo", help="data, runs and bundles (reused)")
    p.add_argument("--num-images", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument(
        "--hf-seconds", type=float, default=150.0, help="fine-tuning time of the HF captioner"
    )
    p.add_argument(
        "--clip-seconds", type=float, default=60.0, help="fine-tuning time of the HF CLIP"
    )
    a = p.parse_args(argv)
    work = Path(a.workdir)
    import torch

    import mmfast
    from mmfast.captioner import Captioner
    from mmfast.preprocess import PreprocessConfig, load_rgb, preprocess_batch
    from mmfast.retriever import Retriever
    from mmfast.vqa import VQA

    from . import decoding
    from .runs import load_run

    torch.set_num_threads(2)
    _say("1. data")
    data = _ensure_data(work, a.num_images)
    _say("2. training (PyTorch)")
    runs = {t: _ensure_run(work, data, t, a.epochs) for t in ("caption", "retrieval", "vqa")}
    for t, r in runs.items():
        m = json.loads((r / "metrics.json").read_text())
        test = {
            k: v
            for k, v in m.get("test", {}).items()
            if k in ("bleu4", "cider", "r@1", "r@5", "r@10", "rerank_r@1", "accuracy")
        }
        print(f"  {t:9} test: " + ", ".join(f"{k} {v:.3f}" for k, v in test.items()))
    _say("3. export to ONNX (validated against PyTorch)")
    bundles = {t: _ensure_bundle(work, r, t) for t, r in runs.items()}

    caps = json.loads((data / "captions_test.json").read_text())
    images = caps["images"][:200]
    paths = [str(data / "images" / im["file_name"]) for im in images]
    refs: dict[int, list[str]] = {}
    for ann in caps["annotations"]:
        refs.setdefault(ann["image_id"], []).append(ann["caption"])

    _say("4a. captions (mmfast runtime, no torch in the loop)")
    cap = Captioner.load(bundles["caption"], threads=2)
    for im, path, c in zip(images[:4], paths[:4], cap.caption(paths[:4], beam_size=3), strict=True):
        print(f"  {Path(path).name}: {c.text}")
        print(f"  {'':10}  reference: {refs[im['id']][0]}")
    pictures = work / "pictures"
    if _can_draw():
        from mmfast import viz

        pictures.mkdir(exist_ok=True)
        c = cap.caption(paths[0], beam_size=3, return_attention=True)[0]
        out = viz.save(viz.attention_grid(paths[0], c), pictures / "attention.png")
        print(f"  where each word looked: {out}")
    _say("4b. text search over 200 test images")
    ret = Retriever.load(bundles["retrieval"], threads=2)
    ret.add_images(paths, ids=[Path(x).name for x in paths])
    for im in images[:3]:
        q = refs[im["id"]][0]
        ids, _ = ret.search(q, k=3, rerank=True)
        hit = "right image first" if ids[0] == Path(im["file_name"]).name else "missed"
        print(f"  '{q}' -> {', '.join(ids)}  ({hit})")
    if _can_draw():
        q = refs[images[0]["id"]][0]
        ids, scores = ret.search(q, k=8, rerank=True)
        by_name = {Path(x).name: x for x in paths}
        sheet = viz.contact_sheet(q, [by_name[i] for i in ids], list(scores), list(ids))
        print(f"  contact sheet of '{q}': {viz.save(sheet, pictures / 'search.png')}")
    _say("4c. questions")
    vqa = VQA.load(bundles["vqa"], threads=2)
    qa = json.loads((data / "vqa_test.json").read_text())["questions"]
    by_id = {im["id"]: p for im, p in zip(images, paths, strict=True)}
    for q in [q for q in qa if q["image_id"] in by_id][:5]:
        ans = vqa.answer(by_id[q["image_id"]], q["question"])
        print(f"  {q['question']} -> {ans.text} ({ans.confidence:.2f}); truth: {q['answer']}")
    _official_vqa_score(data, vqa)

    _say("5. latency, PyTorch eager vs mmfast (ONNX Runtime), 2 threads, median ms")
    model, cfg, _ = load_run(runs["caption"])
    prep = PreprocessConfig.from_dict(cfg["preprocess"])
    pil = [load_rgb(x) for x in paths[:32]]

    def torch_caption(ims, beam):
        with torch.no_grad():
            st = model.encode(torch.from_numpy(preprocess_batch(ims, prep)))
            if beam == 1:
                return decoding.greedy(model, st, 20).tokens
            return decoding.beam_search(model, st, 20, beam=beam).tokens

    rows = []
    for name, ims, beam in [
        ("caption, 1 image, greedy", pil[:1], 1),
        ("caption, 1 image, beam 4", pil[:1], 4),
        ("caption, 32 images, greedy", pil, 1),
    ]:
        same = torch_caption(ims, beam) == [c.tokens for c in cap.caption(ims, beam_size=beam)]
        tt = _median_ms(lambda ims=ims, beam=beam: torch_caption(ims, beam), 10)
        tm = _median_ms(lambda ims=ims, beam=beam: cap.caption(ims, beam_size=beam), 10)
        rows.append((name, tt, tm, "identical" if same else "DIFFERENT"))
    print(f"  {'':28} {'PyTorch':>9} {'mmfast':>9} {'speedup':>8}  tokens")
    for name, tt, tm, same in rows:
        print(f"  {name:28} {tt:9.2f} {tm:9.2f} {tt / tm:7.2f}x  {same}")
    _huggingface(work, data, paths[:4], [refs[im["id"]][0] for im in images[:4]], a.hf_seconds)
    _huggingface_clip(work, data, a.clip_seconds)
    print(
        f"\nmmfast {mmfast.__version__}: kernels {mmfast._C.active_variant()}, "
        f"bundles in {work / 'bundles'}"
    )
    return 0


def _can_draw() -> bool:
    """matplotlib is there (the `viz` extra, in `dev`); else one line saying so, once."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if not getattr(_can_draw, "said", False):
            print("  (no pictures: matplotlib is missing; pip install 'mmfast[viz]')")
            _can_draw.said = True  # type: ignore[attr-defined]
        return False
    return True


def _official_vqa_score(data: Path, vqa: Any) -> None:
    """Step 4d: the official VQA v2 accuracy of the VQA bundle on the test split's VQA v2 files
    (ten simulated humans per question), what ``mmfast eval vqa`` prints."""
    from mmfast.vqa_eval import read_vqa_annotations, read_vqa_questions, vqa_score
    from mmfast.vqa_run import answer_questions, image_paths

    from .vqa_v2 import annotations_file, questions_file

    _say("4d. official VQA v2 accuracy, test split (mmfast eval vqa)")
    qfile = data / "vqa_v2" / questions_file("test")
    if not qfile.is_file():  # data written before the VQA v2 files were
        print(f"  no {qfile.name}: delete {data} to regenerate the data with it")
        return
    qs = read_vqa_questions(qfile)
    anns = read_vqa_annotations(data / "vqa_v2" / annotations_file("test"))
    paths = image_paths(qs, data / "images", "{data_subtype}/{image_id:06d}.png")
    score = vqa_score(anns, answer_questions(vqa, qs.questions, paths))
    types = ", ".join(f"{t} {v:.2f}" for t, v in score.per_answer_type.items())
    print(f"  {score.n_questions} questions: overall {score.overall:.2f} ({types})")
    per_q = ", ".join(f"{t} {v:.1f}" for t, v in score.per_question_type.items())
    print(f"  per question type: {per_q}")


def _huggingface(work: Path, data: Path, paths: list[str], refs: list[str], seconds: float) -> None:
    """Step 6: a Hugging Face model directory -> bundle -> captions (reused when present)."""
    import torch
    import transformers

    from mmfast.captioner import Captioner

    from .hf.finetune import finetune_vit_gpt2

    _say("6. bring your own model: Hugging Face ViT + GPT-2 (transformers) -> mmfast")
    transformers.logging.set_verbosity_error()  # its notices and loading progress bars
    transformers.logging.disable_progress_bar()
    model_dir, bundle = work / "hf" / "vit-gpt2", work / "bundles" / "hf-vit-gpt2"
    _finetune_and_export(finetune_vit_gpt2, data, model_dir, bundle, seconds, "loss")
    cap = Captioner.load(bundle, threads=2)
    got = cap.caption(paths, beam_size=3)
    model = transformers.VisionEncoderDecoderModel.from_pretrained(model_dir).eval()
    pixels = torch.from_numpy(cap.pixels(paths))
    with torch.no_grad():
        want = model.generate(pixel_values=pixels, num_beams=3).tolist()
    eos = model.generation_config.eos_token_id
    for path, c, ref, w in zip(paths, got, refs, want, strict=True):
        w = w[1:]
        same = c.tokens == (w[: w.index(eos)] if eos in w else w)
        print(f"  {Path(path).name}: {c.text}   [{'same as' if same else 'DIFFERS from'} generate]")
        print(f"  {'':10}  reference: {ref}")


def _huggingface_clip(work: Path, data: Path, seconds: float) -> None:
    """Step 7: a Hugging Face CLIP directory -> retrieval bundle -> search and metrics on the
    test split, the same as transformers' own embeddings give (reused when present)."""
    import torch
    import transformers

    from mmfast.karpathy import read_karpathy
    from mmfast.preprocess import load_rgb
    from mmfast.retrieval_eval import evaluate_retrieval
    from mmfast.retrieval_metrics import retrieval_metrics_from_embeddings
    from mmfast.retriever import Retriever

    from .hf.finetune import finetune_clip

    _say("7. bring your own retriever: Hugging Face CLIP (transformers) -> mmfast")
    transformers.logging.set_verbosity_error()  # as in step 6, when run alone
    transformers.logging.disable_progress_bar()
    model_dir, bundle = work / "hf" / "clip", work / "bundles" / "hf-clip"
    _finetune_and_export(finetune_clip, data, model_dir, bundle, seconds, "contrastive loss")
    split = read_karpathy(data / "dataset_shapes.json", data / "images", "test", limit=200)
    ret = Retriever.load(bundle, threads=2)
    got = evaluate_retrieval(ret, split)
    # the same metrics from transformers' own processor and model
    model = transformers.CLIPModel.from_pretrained(model_dir).eval()
    proc = transformers.CLIPProcessor.from_pretrained(model_dir)
    parts = []
    with torch.no_grad():
        for i in range(0, len(split.image_paths), 50):
            ims = [load_rgb(p) for p in split.image_paths[i : i + 50]]
            px = proc.image_processor(ims, return_tensors="pt").pixel_values
            parts.append(_pooled(model.get_image_features(pixel_values=px)))
        enc = proc.tokenizer(split.captions, padding=True, truncation=True, return_tensors="pt")
        txt = _pooled(model.get_text_features(**enc))
    img = torch.cat(parts)
    want = retrieval_metrics_from_embeddings(
        txt.numpy(), img.numpy(), split.image_of_text
    ).as_dict()
    keys = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")
    same = all(abs(got[k] - want[k]) < 1e-9 for k in keys)
    print(
        f"  test split, {len(split.image_paths)} images, {len(split.captions)} captions "
        f"(mmfast eval retrieval): "
        + ", ".join(f"{k} {got[k]:.1f}" for k in keys)
        + f"   [{'same as' if same else 'DIFFERS from'} transformers' embeddings]"
    )
    ret.add_images([str(p) for p in split.image_paths], ids=[p.name for p in split.image_paths])
    query = split.captions[0]
    ids, scores = ret.search(query, k=3)
    print(
        f"  search {query!r}: "
        + ", ".join(f"{i} {s:.3f}" for i, s in zip(ids, scores, strict=True))
    )
    print(f"  (the caption belongs to {split.image_paths[int(split.image_of_text[0])].name})")


def _finetune_and_export(
    finetune: Callable[..., Any],
    data: Path,
    model_dir: Path,
    bundle: Path,
    seconds: float,
    loss: str,
) -> None:
    """Steps 6 and 7: fine-tune into model_dir and export it to bundle, each unless done."""
    from . import export

    if (model_dir / "model.safetensors").is_file():
        print(f"reusing fine-tuned model {model_dir}")
    else:
        r = _quiet(finetune, data, model_dir, seconds=seconds)
        print(
            f"fine-tuned {r.steps} steps in {r.seconds:.0f} s ({loss} {r.first_loss:.2f} -> "
            f"{r.last_loss:.2f}); saved with save_pretrained to {model_dir}"
        )
    if not (bundle / "manifest.json").is_file():
        t0 = time.time()
        _quiet(export, model_dir, bundle)
        print(f"exported {model_dir} -> {bundle} in {time.time() - t0:.0f} s (validated)")


def _pooled(features: Any) -> Any:
    """get_*_features' embeddings: transformers 5.x returns an output object (its
    pooler_output), 4.x the tensor."""
    return getattr(features, "pooler_output", features)


if __name__ == "__main__":
    sys.exit(main())
