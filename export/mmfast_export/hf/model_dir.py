"""A Hugging Face model directory, as ``save_pretrained`` (or a hub download) leaves it, read
and checked before anything is loaded.

Expected files: ``config.json`` (the architecture), weights (``model.safetensors``, a sharded
``model.safetensors.index.json`` or ``pytorch_model.bin``), a tokenizer (``tokenizer.json``, or
the files a fast tokenizer is converted from: ``vocab.json`` + ``merges.txt``, ``vocab.txt``),
``preprocessor_config.json``, and optionally ``generation_config.json``. What is missing or
unreadable is a :class:`ModelDirError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelDir", "ModelDirError", "is_hf_model_dir", "read_model_dir"]

WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# a fast tokenizer's own file, or what transformers converts one from
TOKENIZER_SOURCES = (("tokenizer.json",), ("vocab.json", "merges.txt"), ("vocab.txt",))


class ModelDirError(ValueError):
    """A Hugging Face model directory lacks a file or holds an unreadable one."""


@dataclass(frozen=True)
class ModelDir:
    path: Path
    config: dict[str, Any]  # config.json
    processor: dict[str, Any]  # preprocessor_config.json
    generation: dict[str, Any]  # generation_config.json ({} when absent)

    @property
    def architecture(self) -> str:
        """config.json's first architecture, or "" when it names none."""
        arch = self.config.get("architectures") or [""]
        return str(arch[0])


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:  # JSON nested deeper than Python's parser recurses
        raise ModelDirError(f"{path}: unreadable (nested too deeply)") from None
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{path}: unreadable ({e})") from e
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: not a JSON object")
    return data


def is_hf_model_dir(path: str | Path) -> bool:
    """Whether `path` looks like a Hugging Face model directory (config.json with a model_type),
    as opposed to an mmfast training run."""
    cfg = Path(path) / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # a run's loader says what is wrong
        return False
    return isinstance(data, dict) and "model_type" in data


def read_model_dir(path: str | Path) -> ModelDir:
    root = Path(path)
    if not root.is_dir():
        raise ModelDirError(f"{root}: not a directory")
    if not (root / "config.json").is_file():
        raise ModelDirError(f"{root}: no config.json (not a Hugging Face model directory?)")
    config = _json(root / "config.json")
    if not any((root / w).is_file() for w in WEIGHTS):
        raise ModelDirError(f"{root}: no weights (expected one of {', '.join(WEIGHTS)})")
    if not any(all((root / f).is_file() for f in fs) for fs in TOKENIZER_SOURCES):
        raise ModelDirError(
            f"{root}: no tokenizer (expected tokenizer.json, or vocab.json + merges.txt, "
            "or vocab.txt)"
        )
    if not (root / "preprocessor_config.json").is_file():
        raise ModelDirError(f"{root}: no preprocessor_config.json (how images are prepared)")
    processor = _json(root / "preprocessor_config.json")
    gen = root / "generation_config.json"
    generation = _json(gen) if gen.is_file() else {}
    return ModelDir(root, config, processor, generation)
