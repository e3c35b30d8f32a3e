"""Run loading: a run directory written by training -> its model, config and tokenizer.

Used by training (to resume), by the ONNX export, the demo and the benchmarks. It imports no
training code: exporting or benchmarking a run needs the models and the checkpoint format only
(``checkpoint.py`` describes the run directory's files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from mmfast.tokenizer import Tokenizer

from .checkpoint import config_from_dict, config_to_dict, load_weights
from .models.captioner_lstm import LSTMCaptioner, LSTMCaptionerConfig
from .models.captioner_transformer import TransformerCaptioner, TransformerCaptionerConfig
from .models.retriever import Retriever, RetrieverConfig
from .models.vqa import VQAConfig, VQAModel
from .models.vqa_transformer import VQATransformer, VQATransformerConfig

__all__ = [
    "MODELS",
    "ModelFamily",
    "ModelKindError",
    "Run",
    "build_model",
    "load_run",
    "model_config",
    "read_config",
]


class ModelFamily(NamedTuple):
    """One model family: the task its runs train, its module class and its config dataclass
    (``config.json``'s ``"model"`` entry is that dataclass as JSON, plus ``"kind"``)."""

    task: str
    model: type[nn.Module]
    config: type[Any]


# model kind (each class's `kind`, written to config.json) -> family; a new family is one line
MODELS: dict[str, ModelFamily] = {
    LSTMCaptioner.kind: ModelFamily("caption", LSTMCaptioner, LSTMCaptionerConfig),
    TransformerCaptioner.kind: ModelFamily(
        "caption", TransformerCaptioner, TransformerCaptionerConfig
    ),
    Retriever.kind: ModelFamily("retrieval", Retriever, RetrieverConfig),
    VQAModel.kind: ModelFamily("vqa", VQAModel, VQAConfig),
    VQATransformer.kind: ModelFamily("vqa", VQATransformer, VQATransformerConfig),
}


class ModelKindError(ValueError):
    """A model config names a kind that is not registered, or one of another task."""


def build_model(task: str, model_cfg: dict[str, Any]) -> nn.Module:
    """A freshly initialised model from its JSON config (``config.json`` -> ``"model"``) for a
    run of ``task``."""
    kind = model_cfg["kind"]
    family = MODELS.get(kind)
    if family is None:
        raise ModelKindError(f"unknown model kind {kind!r}; known kinds: {', '.join(MODELS)}")
    if family.task != task:
        raise ModelKindError(f"model kind {kind!r} is a {family.task} model, not a {task} one")
    params = {k: v for k, v in model_cfg.items() if k != "kind"}
    return family.model(config_from_dict(family.config, params))


def model_config(model: nn.Module) -> dict[str, Any]:
    """The inverse of :func:`build_model`: the JSON config of a registered model."""
    kinds = [k for k, f in MODELS.items() if type(model) is f.model]
    if not kinds:
        raise ModelKindError(f"{type(model).__name__} is not a registered model family")
    return {"kind": kinds[0], **config_to_dict(model.cfg)}


class Run(NamedTuple):
    """A trained run, ready to use (unpacks as ``model, config, tokenizer``)."""

    model: nn.Module  # eval mode
    config: dict[str, Any]  # the run's config.json
    tokenizer: Tokenizer


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``config.json``: task, model config, preprocessing, training arguments, progress.
    ValueError naming the file when it is not JSON or lacks what loading a run needs."""
    path = Path(run_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, nesting
        raise ValueError(f"{path}: not a run's config ({type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: not a run's config (not a JSON object)")
    for key, kind in (("task", str), ("model", dict), ("preprocess", dict)):
        if not isinstance(cfg.get(key), kind):
            raise ValueError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    if not isinstance(cfg["model"].get("kind"), str):
        raise ValueError(f"{path}: 'model.kind' is missing or not a string")
    return cfg


def load_run(run_dir: str | Path) -> Run:
    """A trained model (eval mode), its config.json and its tokenizer."""
    d = Path(run_dir)
    cfg = read_config(d)
    model = build_model(cfg["task"], cfg["model"])
    load_weights(model, d / "model.safetensors")
    model.eval()
    return Run(model, cfg, Tokenizer.load(d / "vocab.txt"))
