"""Command line of the PyTorch side: ``mmfast data|train|export|demo ...``.

Each ``main_*`` takes the arguments after the subcommand word (``mmfast data shapes --out X`` ->
``["shapes", "--out", "X"]``), calls the library function that does the work
(``shapes.write_dataset``, ``train.train``, ``onnx_export.export_run``, ``demo.main``) and
returns an exit status; bad input (an argument value, a missing or unreadable file, a run or
dataset that cannot be used) is one line on stderr and status 2. The ``mmfast`` CLI
(``mmfast/cli.py``) calls these functions by name.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, TypeVar

from mmfast._checks import one_line

from .field_checks import FieldError

__all__ = ["main", "main_data", "main_demo", "main_export", "main_train"]

T = TypeVar("T")

# What bad input raises (a file that cannot be read or written is an OSError).
_INPUT_ERRORS = (ValueError, TypeError, OSError)


def _from_args(cls: type[T], ns: argparse.Namespace, **overrides: Any) -> T:
    """A config dataclass from the parsed options of the same names (argparse's defaults are
    the dataclass's), with ``overrides`` for the options that need converting."""
    names = inspect.signature(cls).parameters
    given = {k: v for k, v in vars(ns).items() if k in names}
    return cls(**{**given, **overrides})


def _data_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmfast data", description="Generate a dataset.")
    sub = p.add_subparsers(dest="generator", required=True)
    s = sub.add_parser("shapes", help="scenes of coloured shapes with captions and Q&A")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--num-images", type=int, default=10000)
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--noise", type=float, default=6.0, help="pixel noise std (0-255), 0: none")
    s.add_argument(
        "--texture-prob",
        type=float,
        default=0.5,
        help="probability of a striped/checkered background",
    )
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--test-fraction", type=float, default=0.1)
    s.add_argument("--workers", type=int, default=None, help="processes (default: CPUs, <= 4)")
    v = sub.add_parser(
        "vqa-v2",
        help="official VQA v2 questions + annotations -> training questions (vqa_SPLIT.json)",
    )
    v.add_argument("--questions", required=True, help="VQA v2 questions JSON")
    v.add_argument("--annotations", required=True, help="VQA v2 annotations JSON")
    v.add_argument(
        "--out",
        required=True,
        help="the file to write, vqa_{train,val,test}.json next to that split's COCO captions",
    )
    return p


def _option_error(command: str, e: FieldError, ns: argparse.Namespace) -> int:
    """A config field's error, naming the option (``--num-images``) and quoting what was typed;
    status 2."""
    given = vars(ns).get(e.names[0], e.value)  # e.g. --widths' text, before it became ints
    print(f"mmfast {command}: {e.message(_option, given)}", file=sys.stderr)
    return 2


def _option(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def main_data(argv: list[str]) -> int:
    args = _data_parser().parse_args(argv)
    if args.generator == "vqa-v2":
        return _vqa_v2(args)
    from .shapes import ShapesConfig, write_dataset

    try:
        summary = write_dataset(_from_args(ShapesConfig, args), args.out, workers=args.workers)
    except FieldError as e:
        return _option_error("data", e, args)
    except _INPUT_ERRORS as e:
        print(f"mmfast data: {one_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _vqa_v2(args: argparse.Namespace) -> int:
    """``mmfast data vqa-v2``: the official files -> one target answer per question."""
    from .vqa_v2 import to_training_questions

    try:
        data = to_training_questions(args.questions, args.annotations)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data))
    except _INPUT_ERRORS as e:
        print(f"mmfast data: {one_line(e)}", file=sys.stderr)
        return 2
    n = len(data["questions"])
    answers = len({q["answer"] for q in data["questions"]})
    print(f"{n} questions, {answers} distinct answers -> {args.out}")
    return 0


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmfast train",
        description="Train a captioner, a retriever or a VQA model on a COCO-captions-format "
        "dataset (DIR/captions_{train,val,test}.json + DIR/images/), e.g. one made by "
        "`mmfast data shapes`.",
    )
    p.add_argument("task", choices=["caption", "retrieval", "vqa"])
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics)")
    p.add_argument("--epochs", type=int, default=None, help="default: per task")
    p.add_argument("--decoder", choices=["lstm", "transformer"], default="lstm", help="caption")
    p.add_argument(
        "--model",
        choices=["attention", "transformer"],
        default="attention",
        help="vqa: question-guided attention over the regions (kind vqa) or a joint "
        "Transformer over question tokens and regions (kind vqa_transformer)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="images per batch")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="model input side (default: the generated dataset's, else 64)",
    )
    p.add_argument("--widths", default="32,64,128", help="CNN stage widths")
    p.add_argument("--beam", type=int, default=1, help="beam size for the final evaluation")
    p.add_argument("--length-penalty", type=float, default=0.0)
    p.add_argument("--rerank-k", type=int, default=10)
    p.add_argument("--limit-train", type=int, default=None, help="use the first N train images")
    p.add_argument("--limit-eval", type=int, default=None, help="use the first N val/test images")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this epoch (LR schedule still spans --epochs); --resume later",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--train-json", default=None, help="COCO captions JSON (default: DATA/captions_train.json)"
    )
    p.add_argument("--val-json", default=None)
    p.add_argument("--test-json", default=None)
    p.add_argument("--images", default=None, help="image folder (default: DATA/images or DATA)")
    return p


def main_train(argv: list[str]) -> int:
    a = _train_parser().parse_args(argv)
    # Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads
    # made training 2-3x slower. Only effective if torch is not imported yet.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .train import TrainArgs, train

    try:
        widths = tuple(int(w) for w in a.widths.split(","))
    except ValueError:
        print(f"mmfast train: bad --widths {a.widths!r}", file=sys.stderr)
        return 2
    try:  # checked here, before any data is read
        args = _from_args(TrainArgs, a, widths=widths, progress=not a.no_progress)
    except FieldError as e:
        return _option_error("train", e, a)
    try:
        summary = train(args)
    except _INPUT_ERRORS as e:
        print(f"mmfast train: {one_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def main_export(argv: list[str]) -> int:
    """``mmfast export SOURCE --out BUNDLE_DIR``: ONNX graphs + manifest, validated. SOURCE is
    a run directory of `mmfast train` or a Hugging Face model directory."""
    p = argparse.ArgumentParser(
        prog="mmfast export",
        description="Export a trained run or a Hugging Face model directory to an ONNX "
        "bundle, validated against PyTorch (and, for Hugging Face models, against "
        "model.generate).",
    )
    p.add_argument(
        "source", help="a run directory of `mmfast train`, or a Hugging Face model directory"
    )
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument(
        "--task",
        choices=["caption", "retrieval", "rerank", "vqa"],
        default=None,
        help="Hugging Face models: the task to export for (default: from config.json)",
    )
    a = p.parse_args(argv)
    from . import export
    from .onnx_export import ExportValidationError

    try:
        manifest = export(a.source, a.out, task=a.task)
    except (*_INPUT_ERRORS, ExportValidationError) as e:
        print(f"mmfast export: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"exported {manifest['kind']} to {a.out}")
    for g, checks in manifest["validation"].items():
        if g.endswith(".onnx"):
            err = max(o["max_abs_err"] for chk in checks.values() for o in chk.values())
            print(f"  {g:22} ORT vs PyTorch max abs err {err:.2e}")
    ref = manifest["validation"].get("reference") or {}
    if "max_abs_err_per_step" in ref:  # a captioner's step
        err = max(ref["max_abs_err_per_step"])
        print(f"  {'step vs transformers':22} logits max abs err {err:.2e} ({ref['steps']} steps)")
    for what in ("image", "text"):  # a dual encoder's embeddings
        if (dist := ref.get(f"{what}_max_cosine_distance")) is not None:
            print(f"  {what + ' embeddings':22} cosine distance to transformers <= {dist:.1e}")
    if hf := manifest["validation"].get("hf_reference"):  # a re-ranker's P(match), ViLT's scores
        err = hf.get("score_max_abs_err_vs_float64")
        what = "answer scores" if manifest["task"] == "vqa" else "P(match)"
        if err is not None:
            print(f"  {what:22} max abs err vs transformers (float64) {err:.2e}")
    if gen := manifest["validation"].get("hf_generate"):  # a generative VQA model's answers
        modes = sorted(m.removesuffix("_tokens_identical") for m in gen if "_tokens_" in m)
        print(
            f"  {'answers':22} tokens identical to model.generate ({', '.join(modes)}) on "
            f"{gen['questions']} questions"
        )
    if ref.get("rankings_identical"):
        print(f"  {'rankings':22} identical to transformers'")
    if gen := manifest["validation"].get("generate"):
        print(f"  {'captions':22} tokens identical to model.generate on {gen['images']} images")
    return 0


def main_demo(argv: list[str]) -> int:
    """``mmfast demo``: data -> training -> export -> runtime, with a latency table."""
    from .demo import main as demo

    return demo(argv)


def main(argv: list[str] | None = None) -> int:
    """``python -m mmfast_export {data,train,export,demo} ...``"""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"data": main_data, "train": main_train, "export": main_export, "demo": main_demo}
    if not argv or argv[0] not in commands:
        print("usage: python -m mmfast_export {data,train,export,demo} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
