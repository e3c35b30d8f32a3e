"""What every Hugging Face export shares, whatever the task: building the bundle in a staging
directory, saving the tokenizer, images to check the graphs on, the provenance record."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfast._checks import one_line

from ..onnx_export import _git_commit
from .model_dir import ModelDir, ModelDirError

__all__ = [
    "bundle_sections",
    "check_images",
    "check_sub_configs",
    "from_pretrained",
    "provenance",
    "save_tokenizer",
    "staging",
]


def save_tokenizer(d: ModelDir, out: Path, vocab_size: int) -> tuple[int, bool, dict[str, int]]:
    """tokenizer.json into `out`; (its size, clean_up_tokenization_spaces, special ids).
    `vocab_size`: the model's embedding table (a longer tokenizer is refused)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(d.path, local_files_only=True)
    except Exception as e:  # tokenizers, sentencepiece and transformers each raise their own
        raise ModelDirError(f"{d.path}: the tokenizer cannot be loaded ({one_line(e)})") from e
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ModelDirError(f"{d.path}: the tokenizer has no fast (tokenizers) version")
    backend.save(str(out / "tokenizer.json"))
    n = len(tok)
    if n > vocab_size:
        # ids past the embedding table would crash the decoder or read garbage
        raise ModelDirError(
            f"{d.path}: the tokenizer has {n} tokens, more than the decoder's vocab_size "
            f"{vocab_size} (a tokenizer of another model?)"
        )
    ids = {
        name: int(i)
        for name in ("pad", "bos", "eos", "unk")
        if (i := getattr(tok, f"{name}_token_id", None)) is not None
    }
    return n, bool(getattr(tok, "clean_up_tokenization_spaces", False)), ids


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A hidden directory beside `out` to build the bundle in; moved to `out` on success,
    removed on failure. An existing `out` is replaced only if it is empty or a bundle."""
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"out: {out} exists and is not a directory")
        if any(out.iterdir()) and not (out / "manifest.json").is_file():
            raise FileExistsError(f"out: {out} is a non-empty directory that is not a bundle")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    mask = os.umask(0)  # mkdtemp makes it private; the bundle gets a directory's usual mode
    os.umask(mask)
    tmp.chmod(0o777 & ~mask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def check_images(n: int, size: int) -> list[np.ndarray]:
    """n real-looking images: generated scenes of coloured shapes (uint8 (H, W, 3))."""
    from ..shapes import ShapesConfig, render, sample_scene

    cfg = ShapesConfig(size=max(64, size))
    return [np.asarray(render(sample_scene(cfg, i), cfg)) for i in range(n)]


def _transformers_version() -> str:
    import transformers

    return str(transformers.__version__)


def provenance(d: ModelDir) -> dict[str, Any]:
    """The manifest's provenance: where the model came from, with what it was exported."""
    return {
        "model_dir": str(d.path.resolve()),
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "transformers": _transformers_version(),
        "python": sys.version.split()[0],
    }


def check_sub_configs(d: ModelDir, want: dict[str, str]) -> None:
    """ValueError unless each sub-config (e.g. "vision_config") has the model_type the
    adapter cuts (a missing one is taken as that type, as transformers defaults it)."""
    for key, model_type in want.items():
        got = d.config.get(key, {}).get("model_type", model_type)
        if got != model_type:
            raise ValueError(f"{d.path}: {key}.model_type {got!r} is not {model_type!r}")


def from_pretrained(d: ModelDir, cls: Any) -> Any:
    """``cls.from_pretrained`` of the directory, offline, in eval mode; ModelDirError naming
    the directory if the weights cannot be loaded."""
    try:
        model = cls.from_pretrained(d.path, local_files_only=True)
    except Exception as e:  # safetensors, torch and transformers each raise their own
        raise ModelDirError(f"{d.path}: the weights cannot be loaded ({one_line(e)})") from e
    return model.eval()


def bundle_sections(
    graphs: dict[str, Any], preprocess: Any, clean_up_spaces: bool, special: Any
) -> dict[str, Any]:
    """The manifest sections every Hugging Face bundle has the same way: opset, graphs,
    preprocessing, tokenizer.json and its special-token ids (a SpecialTokens)."""
    from dataclasses import asdict

    from ..onnx_export import OPSET

    return {
        "opset": OPSET,
        "graphs": graphs,
        "preprocess": preprocess.to_dict(),
        "vocab": "tokenizer.json",
        "tokenizer": {"clean_up_tokenization_spaces": clean_up_spaces},
        "special_tokens": asdict(special),
    }
