"""The `mmfast` command line (also `python -m mmfast`).

Runtime commands live here and never import torch. `data`, `train` and `export` belong to the
PyTorch side (package `mmfast_export`, the `export` extra) and are handed over to it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from ._version import __version__

__all__ = ["main"]

# Subcommand -> function name in mmfast_export.cli, which takes the remaining argv.
_TORCH_COMMANDS = {
    "data": ("main_data", "generate a dataset (e.g. `mmfast data shapes --out DIR`)"),
    "train": ("main_train", "train a model (caption, retrieval, vqa)"),
    "export": ("main_export", "export a trained checkpoint to an ONNX bundle"),
}
# Runtime commands not in this version yet: they say so instead of pretending.
_PLANNED = {
    "index": "build a text-to-image search index",
    "search": "search an index with text",
    "ask": "answer a question about an image",
    "serve": "serve the models over HTTP",
}

_EXPORT_INSTALL_HINT = (
    "the PyTorch side is not installed: install the `export` extra, e.g.\n"
    "    pip install torch==2.13.0 && pip install 'mmfast[export]'\n"
    "(or `make setup` in a source checkout)"
)


def _run_torch_command(name: str, argv: list[str]) -> int:
    func_name = _TORCH_COMMANDS[name][0]
    try:
        module = importlib.import_module("mmfast_export.cli")
    except ImportError as e:
        missing = getattr(e, "name", None) or ""
        if missing.split(".")[0] in {"torch", "mmfast_export", "onnx", "safetensors"}:
            print(f"mmfast {name}: {_EXPORT_INSTALL_HINT}", file=sys.stderr)
            return 2
        raise
    func: Callable[[list[str]], int] | None = getattr(module, func_name, None)
    if func is None:
        print(f"mmfast {name}: not available in this version of mmfast_export", file=sys.stderr)
        return 2
    return int(func(argv) or 0)


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


def _cmd_caption(args: argparse.Namespace) -> int:
    from .bundle import BundleError
    from .captioner import Captioner

    try:
        cap = Captioner.load(args.model, device=args.device, threads=args.threads)
        results = cap.caption(
            args.images,
            beam_size=args.beam,
            max_len=args.max_len,
            length_penalty=args.length_penalty,
        )
    except (BundleError, FileNotFoundError, ValueError) as e:
        print(f"mmfast caption: {e}", file=sys.stderr)
        return 2
    for path, c in zip(args.images, results, strict=True):
        print(f"{path}\t{c.text}\t{c.score:.3f}")
    return 0


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
    s.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    s.add_argument("--max-len", type=int, default=None, help="default: 20 or the model's limit")
    s.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha (0: off)")
    s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    s.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    s.set_defaults(func=_cmd_caption)

    for name, (_, help_text) in _TORCH_COMMANDS.items():
        # The PyTorch side parses its own arguments (and prints its own --help).
        sub.add_parser(name, help=help_text + " [needs the export extra]", add_help=False)
    for name, help_text in _PLANNED.items():
        sub.add_parser(name, help=help_text + " [not in this version yet]")
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
    if args.command in _PLANNED:
        print(f"mmfast {args.command}: not available in this version yet", file=sys.stderr)
        return 2
    result: int = args.func(args)
    return result
