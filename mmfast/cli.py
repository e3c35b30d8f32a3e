"""The `mmfast` command line (also `python -m mmfast`).

Runtime commands live here and never import torch. `data`, `train` and `export` belong to the
PyTorch side (package `mmfast_export`, the `export` extra) and are handed over to it.

Bad input to any command (a missing, corrupt or mismatched bundle, image or index; a bad
argument value; a file that cannot be read or written; more memory than there is) is reported
as one line, ``mmfast COMMAND: MESSAGE``, with exit status 2. Any other exception is a bug in
mmfast and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from ._checks import one_line
from ._version import __version__

__all__ = ["main"]

# Subcommand -> function name in mmfast_export.cli, which takes the remaining argv.
_TORCH_COMMANDS = {
    "data": ("main_data", "generate a dataset (e.g. `mmfast data shapes --out DIR`)"),
    "train": ("main_train", "train a model (caption, retrieval, vqa)"),
    "export": ("main_export", "export a trained checkpoint to an ONNX bundle"),
    "demo": ("main_demo", "data -> training -> export -> captions, search, answers, latency"),
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

_EXPORT_INSTALL_HINT = (
    "the PyTorch side is not installed: install the `export` extra, e.g.\n"
    "    pip install torch==2.13.0 && pip install 'mmfast[export]'\n"
    "(or `make setup` in a source checkout)"
)


_EXPORT_DEPS = {"torch", "mmfast_export", "onnx", "onnxscript", "safetensors", "sacrebleu"}


# What a user's input can cause (BundleError is a ValueError); reported in one line.
_USER_ERRORS = (ValueError, TypeError, OSError, MemoryError)


def _missing_export_dep(e: ImportError) -> bool:
    return (getattr(e, "name", None) or "").split(".")[0] in _EXPORT_DEPS


def _report(name: str, command: Callable[[], int]) -> int:
    """Run a command; a user error becomes one line on stderr and status 2."""
    try:
        with warnings.catch_warnings():
            # An image over Pillow's pixel limit is refused in one line (mmfast.preprocess);
            # Pillow's DecompressionBombWarning about it, as it opens it, would only repeat that.
            warnings.filterwarnings("ignore", "Image size", RuntimeWarning, r"PIL\.")
            return command()
    except _USER_ERRORS as e:
        print(f"mmfast {name}: {one_line(e)}", file=sys.stderr)
        return 2


def _run_torch_command(name: str, argv: list[str]) -> int:
    func_name = _TORCH_COMMANDS[name][0]
    # The PyTorch side imports torch lazily, so a missing dependency can surface at import or
    # inside the command: either way, say how to install it.
    try:
        module = importlib.import_module("mmfast_export.cli")
        func: Callable[[list[str]], int] | None = getattr(module, func_name, None)
        if func is None:
            print(f"mmfast {name}: not available in this version of mmfast_export", file=sys.stderr)
            return 2
        return _report(name, lambda: int(func(argv) or 0))
    except ImportError as e:
        if _missing_export_dep(e):
            print(f"mmfast {name}: {_EXPORT_INSTALL_HINT}", file=sys.stderr)
            return 2
        raise


def _cmd_info(args: argparse.Namespace) -> int:
    from ._info import info, info_dict

    if args.json:
        import json

        print(json.dumps(info_dict(), indent=2))
    else:
        info()
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from ._kernel_check import run_kernel_check

    return run_kernel_check(repeats=args.repeats)


def _picture_paths(option: str, out: str, n: int) -> list[Path]:
    """Where --show / --show-attention writes its n pictures: OUT itself for one, else
    OUT's stem + -1, -2, ... Checked before any model runs: matplotlib, the folder, a suffix."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from .viz import INSTALL_HINT

        raise ValueError(
            f"{option} draws with matplotlib, which is missing: {INSTALL_HINT}"
        ) from None
    path = Path(out)
    if path.suffix == "":
        raise ValueError(f"{option} {out}: give a file name with a suffix, e.g. {out}.png")
    if not path.parent.is_dir():
        raise ValueError(f"{option} {out}: the folder {path.parent} does not exist")
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, n + 1)]


def _cmd_caption(args: argparse.Namespace) -> int:
    from .captioner import Captioner

    show = args.show_attention
    outs = _picture_paths("--show-attention", show, len(args.images)) if show else []
    cap = Captioner.load(args.model, device=args.device, threads=args.threads)
    results = cap.caption(
        args.images,
        beam_size=args.beam,
        max_len=args.max_len,
        length_penalty=args.length_penalty,
        return_attention=bool(show),
    )
    for path, c in zip(args.images, results, strict=True):
        print(f"{path}\t{c.text}\t{c.score:.3f}")
    if outs:
        from . import viz

        for path, c, out in zip(args.images, results, outs, strict=True):
            viz.save(viz.attention_grid(path, c), out)
            print(f"attention: {out}")
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from .retriever import Retriever

    root = Path(args.images)
    if not root.is_dir():
        print(f"mmfast index build: --images {root} is not a directory", file=sys.stderr)
        return 2
    paths = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file()
    )
    if not paths:
        print(f"mmfast index build: no images under {root}", file=sys.stderr)
        return 2
    r = Retriever.load(args.model, device=args.device, threads=args.threads, reranker=args.reranker)
    ids = [str(p.relative_to(root)) for p in paths]
    r.use_index(args.backend, expected_size=len(paths))
    r.add_images(
        [str(p) for p in paths], ids=ids, batch_size=args.batch_size, progress=not args.quiet
    )
    r.index.metadata.update(
        {"bundle": str(Path(args.model).resolve()), "images": str(root.resolve())}
    )
    if args.reranker is not None:
        r.index.metadata["reranker"] = str(Path(args.reranker).resolve())
    r.save(args.out)
    print(f"indexed {len(paths)} images from {root} into {args.out}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from .index import open_index
    from .retriever import Retriever

    # the whole index is checked here, so a corrupt one is one clear line before any model
    # is loaded (it is memory-mapped: the second open by Retriever.load reads little)
    meta = open_index(args.index).metadata
    out = _picture_paths("--show", args.show, 1)[0] if args.show else None
    bundle = args.model or meta.get("bundle")
    if not bundle or not isinstance(bundle, str):
        print("mmfast search: the index names no bundle; pass --model", file=sys.stderr)
        return 2
    reranker = args.reranker or (meta.get("reranker") if args.rerank else None)
    r = Retriever.load(
        bundle,
        device=args.device,
        threads=args.threads,
        index=args.index,
        reranker=reranker if isinstance(reranker, str) else None,
    )
    ids, scores = r.search(args.text, k=args.k, rerank=args.rerank)
    for rank, (i, sc) in enumerate(zip(ids, scores, strict=True), 1):
        print(f"{rank}\t{sc:.4f}\t{i}")
    if out and ids:
        from . import viz

        # ids are paths under the folder the index was built from (mmfast index build)
        root = Path(str(meta.get("images", ".")))
        sheet = viz.contact_sheet(args.text, [root / i for i in ids], list(scores), list(ids))
        print(f"contact sheet: {viz.save(sheet, out)}")
    return 0


def _cmd_classify(args: argparse.Namespace) -> int:
    from .retriever import Retriever

    labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    r = Retriever.load(args.model, device=args.device, threads=args.threads)
    probs = r.classify(args.image, labels, template=args.template)
    for j in sorted(range(len(labels)), key=lambda j: -float(probs[j])):
        print(f"{probs[j]:.4f}\t{labels[j]}")
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from .vqa import VQA

    out = _picture_paths("--show", args.show, 1)[0] if args.show else None
    vqa = VQA.load(args.model, device=args.device, threads=args.threads)
    kw: dict[str, int] = {}
    if args.top_k is not None:
        kw["top_k"] = args.top_k
    if args.beam_size is not None:
        kw["beam_size"] = args.beam_size
    ans = vqa.answer_many([args.image], [args.questions], **kw)[0]
    for q, a in zip(args.questions, ans, strict=True):
        print(f"{q}\t{a.text}\t{a.confidence:.3f}")
        for text, score in a.top[1:]:  # the runners-up, when --top-k asks for them
            print(f"\t{text}\t{score:.3f}")
    if out:
        from . import viz

        print(f"answers: {viz.save(viz.answer_figure(args.image, args.questions, ans), out)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    """`mmfast eval retrieval`: the Karpathy-split protocol's metrics of a retrieval bundle."""
    import json

    from .karpathy import read_karpathy
    from .retrieval_eval import evaluate_retrieval
    from .retriever import Retriever

    split = read_karpathy(
        args.karpathy,
        args.images,
        args.split,
        limit=args.limit,
        captions_per_image=args.captions_per_image or None,  # 0: all
    )
    r = Retriever.load(args.model, device=args.device, threads=args.threads)
    m = evaluate_retrieval(r, split, batch_size=args.batch_size, progress=not args.quiet)
    report = {
        "model": str(Path(args.model).resolve()),
        "karpathy": str(Path(args.karpathy).resolve()),
        "dataset": split.dataset,
        "split": split.name,
        **m,
    }
    if args.json is not None:
        text = json.dumps(report, indent=2) + "\n"
        if args.json == "-":
            print(text, end="")
            return 0
        Path(args.json).write_text(text)
    name = f"{split.dataset} {split.name}" if split.dataset else split.name
    print(f"{name}: {m['n_images']} images, {m['n_texts']} captions")
    print(f"{'':12} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'medR':>6} {'meanR':>8}")
    for label, d in (("text->image", "t2i"), ("image->text", "i2t")):
        r1, r5, r10 = (m[f"{d}_r{k}"] for k in (1, 5, 10))
        med, mean = m[f"{d}_median_rank"], m[f"{d}_mean_rank"]
        print(f"{label:12} {r1:6.2f} {r5:6.2f} {r10:6.2f} {med:6g} {mean:8.2f}")
    print(f"rSUM {m['rsum']:.2f}  (recalls in %; ties ranked pessimistically)")
    return 0


def _cmd_eval_vqa(args: argparse.Namespace) -> int:
    """`mmfast eval vqa`: answer a VQA v2 questions file, write the official results file and
    print the official accuracy, overall, per answer type and per question type."""
    import json

    from ._checks import positive_int
    from .vqa import VQA
    from .vqa_eval import (
        ANSWER_TYPES,
        check_vqa_pair,
        read_vqa_annotations,
        read_vqa_questions,
        vqa_score,
        write_vqa_results,
    )
    from .vqa_run import answer_questions, image_paths

    questions = read_vqa_questions(args.questions)
    annotations = read_vqa_annotations(args.annotations)
    check_vqa_pair(questions, annotations, args.questions, args.annotations)
    if not Path(args.images).is_dir():
        raise ValueError(f"--images {args.images} is not a directory")
    subset = questions.questions
    if args.limit is not None:
        subset = subset[: positive_int("--limit", args.limit)]
    if not subset:
        raise ValueError(f"{args.questions}: no questions")
    paths = image_paths(questions, args.images, args.image_pattern)
    vqa = VQA.load(args.model, device=args.device, threads=args.threads)
    results = answer_questions(
        vqa, subset, paths, batch_size=args.batch_size, progress=not args.quiet
    )
    if args.results is not None:
        write_vqa_results(args.results, results)
    score = vqa_score([a for a in annotations if a.question_id in results], results)
    if args.json is not None:
        report = {
            "model": str(Path(args.model).resolve()),
            "questions": str(Path(args.questions).resolve()),
            "annotations": str(Path(args.annotations).resolve()),
            **score.as_dict(),
        }
        text = json.dumps(report, indent=2) + "\n"
        if args.json == "-":
            print(text, end="")
            return 0
        Path(args.json).write_text(text)
    name = questions.data_subtype or Path(args.questions).name
    print(f"{name}: {score.n_questions} questions, official VQA accuracy in %")
    print(f"{'overall':24} {score.overall:6.2f}")
    known = [t for t in ANSWER_TYPES if t in score.per_answer_type]
    for t in known + [t for t in score.per_answer_type if t not in known]:
        print(f"{t:24} {score.per_answer_type[t]:6.2f}  ({score.n_per_answer_type[t]})")
    print("per question type:")
    for t, acc in sorted(score.per_question_type.items()):
        print(f"  {t:22} {acc:6.2f}  ({score.n_per_question_type[t]})")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    # FastAPI/uvicorn are the `serve` extra: imported here, never with `import mmfast`
    try:
        from .serving.cli import serve
    except ImportError as e:
        if (getattr(e, "name", None) or "").split(".")[0] in _SERVE_DEPS:
            raise OSError(
                f"needs the `serve` extra ({e.name} is not installed): pip install 'mmfast[serve]'"
            ) from None
        raise
    return serve(args)


_SERVE_DEPS = {"fastapi", "uvicorn", "starlette", "prometheus_client", "multipart", "ray"}


def _serve_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--bundle",
        action="append",
        required=True,
        metavar="TASK=DIR",
        help="a model to serve: caption=DIR, retrieval=DIR or vqa=DIR (repeat for several)",
    )
    s.add_argument("--index", default=None, help="a saved index to search (mmfast index build)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    s.add_argument("--max-batch", type=int, default=32, help="requests per batch at most")
    s.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a request waits for a batch"
    )
    s.add_argument("--queue", type=int, default=256, help="waiting requests per model before 503")
    s.add_argument("--timeout-s", type=float, default=30.0, help="per request (504 past it)")
    s.add_argument(
        "--workers", type=int, default=1, help="server processes (each loads the models)"
    )
    s.add_argument(
        "--read-only-index", action="store_true", help="refuse /v1/index/add and /remove"
    )
    s.add_argument(
        "--allow-dir",
        default=None,
        metavar="DIR",
        help="let requests name image files under DIR (off by default: uploads only)",
    )
    s.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit (MB)")
    s.add_argument(
        "--max-image-pixels", type=int, default=40_000_000, help="decoded pixels per image"
    )
    s.add_argument("--log-level", default="info", help="uvicorn's log level")
    s.add_argument(
        "--ray",
        action="store_true",
        help="serve on Ray Serve (a local Ray unless RAY_ADDRESS names a cluster)",
    )
    s.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas per model")


def _runtime_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfast", description="Fast inference for multimodal (image + text) models."
    )
    p.add_argument("--version", action="version", version=f"mmfast {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("info", help="version, CPU features, kernel variants, CUDA, onnxruntime")
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser(
        "bench", help="check every kernel variant against a float64 reference and time it"
    )
    s.add_argument("--repeats", type=int, default=20, help="timed repeats (median is reported)")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("caption", help="caption images with an exported bundle")
    s.add_argument("--model", required=True, help="bundle directory (from `mmfast export`)")
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument(
        "--beam", type=int, default=None, help="beam size (1: greedy; default: the model's)"
    )
    s.add_argument(
        "--max-new-tokens",
        "--max-len",
        dest="max_len",
        type=int,
        default=None,
        help="tokens to generate at most (default: the model's setting, or 20)",
    )
    s.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        help="beam length normalisation (default: the model's; ours: GNMT alpha 0, off)",
    )
    s.add_argument(
        "--show-attention",
        metavar="OUT.png",
        default=None,
        help="also draw each word's attention over the image (OUT-1.png, ... for several "
        "images; needs matplotlib)",
    )
    _runtime_args(s)
    s.set_defaults(func=_cmd_caption)

    s = sub.add_parser("index", help="build a text-to-image search index")
    isub = s.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="embed every image under a folder")
    b.add_argument("--model", required=True, help="retrieval bundle directory")
    b.add_argument("--images", required=True, help="folder of images (searched recursively)")
    b.add_argument("--out", required=True, help="index directory to write")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument(
        "--backend",
        choices=["auto", "exact", "hnsw", "ivfpq"],
        default="auto",
        help="index backend (auto: exact up to ~50k images, HNSW past that; needs faiss-cpu)",
    )
    b.add_argument("--quiet", action="store_true", help="no progress output")
    b.add_argument(
        "--reranker", default=None, help="a re-ranker bundle (BLIP ITM) to keep features for"
    )
    _runtime_args(b)
    b.set_defaults(func=_cmd_index)

    s = sub.add_parser("search", help="search an index with text")
    s.add_argument("--index", required=True, help="index directory (mmfast index build)")
    s.add_argument("text", help="what to look for")
    s.add_argument("-k", type=int, default=10, help="results to print")
    s.add_argument("--rerank", action="store_true", help="re-rank the top with cross-attention")
    s.add_argument("--model", default=None, help="retrieval bundle (default: the index's)")
    s.add_argument(
        "--reranker", default=None, help="re-ranker bundle (default: the index's, if any)"
    )
    s.add_argument(
        "--show", metavar="OUT.png", default=None, help="also draw the results as a contact sheet"
    )
    _runtime_args(s)
    s.set_defaults(func=_cmd_search)

    s = sub.add_parser("classify", help="zero-shot labels for an image (CLIP, SigLIP)")
    s.add_argument("--model", required=True, help="retrieval bundle directory")
    s.add_argument("image", help="image file")
    s.add_argument("--labels", required=True, help="comma-separated labels")
    s.add_argument(
        "--template", default="a photo of a {}.", help="prompt each label is put into ({})"
    )
    _runtime_args(s)
    s.set_defaults(func=_cmd_classify)

    s = sub.add_parser("ask", help="answer questions about an image")
    s.add_argument("--model", required=True, help="VQA bundle directory")
    s.add_argument("image", help="image file")
    s.add_argument("questions", nargs="+", help="one or more questions")
    s.add_argument(
        "--top-k", type=int, help="also print the runner-up answers and scores (classifiers)"
    )
    s.add_argument("--beam-size", type=int, help="beam search width (generative models)")
    s.add_argument(
        "--show",
        metavar="OUT.png",
        default=None,
        help="also draw the image with each question, its answer and (own models) where the "
        "model looked",
    )
    _runtime_args(s)
    s.set_defaults(func=_cmd_ask)

    s = sub.add_parser("eval", help="evaluate a bundle on a benchmark split")
    esub = s.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    e = esub.add_parser(
        "retrieval", help="R@1/5/10 both ways, rSUM, ranks, on a Karpathy-split JSON"
    )
    e.add_argument("--model", required=True, help="retrieval bundle directory")
    e.add_argument("--karpathy", required=True, help="dataset_coco.json or the like")
    e.add_argument("--images", required=True, help="image root (ROOT/filepath/filename)")
    e.add_argument("--split", default="test", help="train, val, test or restval (default test)")
    e.add_argument("--limit", type=int, default=None, help="the split's first N images only")
    e.add_argument(
        "--captions-per-image", type=int, default=5, help="first N captions (default 5; 0: all)"
    )
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--json", default=None, metavar="OUT", help="also write JSON here (-: stdout)")
    e.add_argument("--quiet", action="store_true", help="no progress output")
    _runtime_args(e)
    e.set_defaults(func=_cmd_eval)
    from .vqa_run import COCO_PATTERN  # (stdlib only: cheap)

    e = esub.add_parser(
        "vqa", help="official VQA accuracy on VQA v2 files (overall, per answer/question type)"
    )
    e.add_argument("--model", required=True, help="VQA bundle directory")
    e.add_argument("--questions", required=True, help="VQA v2 questions JSON")
    e.add_argument("--annotations", required=True, help="VQA v2 annotations JSON")
    e.add_argument("--images", required=True, help="image folder (e.g. coco/val2014)")
    e.add_argument(
        "--image-pattern",
        default=COCO_PATTERN,
        help="image file under --images; fields {image_id}, {data_subtype} (default: COCO's, "
        "%(default)s; a shapes dataset: {data_subtype}/{image_id:06d}.png under DIR/images)",
    )
    e.add_argument("--results", default=None, metavar="OUT", help="write the results file here")
    e.add_argument("--limit", type=int, default=None, help="the file's first N questions only")
    e.add_argument(
        "--batch-size", "--batch", dest="batch_size", type=int, default=32, help="images a run"
    )
    e.add_argument("--json", default=None, metavar="OUT", help="also write JSON here (-: stdout)")
    e.add_argument("--quiet", action="store_true", help="no progress output")
    _runtime_args(e)
    e.set_defaults(func=_cmd_eval_vqa)

    s = sub.add_parser("serve", help="serve the models over HTTP (needs the serve extra)")
    _serve_args(s)
    _runtime_args(s)
    s.set_defaults(func=_cmd_serve)

    for name, (_, help_text) in _TORCH_COMMANDS.items():
        # The PyTorch side parses its own arguments (and prints its own --help).
        sub.add_parser(name, help=help_text + " [needs the export extra]", add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in _TORCH_COMMANDS:
        return _run_torch_command(args_list[0], args_list[1:])
    parser = _build_parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help()
        return 2
    action = getattr(args, "index_command", None) or getattr(args, "eval_command", None)
    name = args.command + (f" {action}" if action else "")
    return _report(name, lambda: int(args.func(args)))
