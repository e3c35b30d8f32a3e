"""Checkpoints without pickle: weights and optimizer state as safetensors, the rest as JSON.

Layout of a run directory::

    config.json            task, model config, preprocessing, training arguments, progress
    model.safetensors      model weights
    optimizer.safetensors  AdamW moments + step counts (param_groups in the metadata, as JSON)
    rng.safetensors        torch RNG state at the end of the last finished epoch
    vocab.txt              the tokenizer, one token per line
    answers.txt            VQA only: the answer classes, one per line
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmfast._checks import one_line

from .models.encoder import EncoderConfig

__all__ = [
    "config_from_dict",
    "config_to_dict",
    "load_optimizer",
    "load_rng",
    "load_weights",
    "save_optimizer",
    "save_rng",
    "save_weights",
]


def config_to_dict(cfg: Any) -> dict[str, Any]:
    assert is_dataclass(cfg) and not isinstance(cfg, type)
    d = asdict(cfg)
    return json.loads(json.dumps(d))  # tuples -> lists, JSON-safe


def config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Rebuild a model config dataclass (and its nested EncoderConfig) from JSON."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    kw = dict(d)
    if "encoder" in kw and isinstance(kw["encoder"], dict):
        enc = dict(kw["encoder"])
        enc["widths"] = tuple(enc.get("widths", EncoderConfig.widths))
        kw["encoder"] = EncoderConfig(**enc)
    return cls(**kw)


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, str(path), metadata={"format": "pt"})


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """The weights at `path` into `model`; OSError if the file cannot be read, ValueError if it
    is not a safetensors file of this model's weights."""
    try:
        sd = load_file(str(path))
    except OSError:
        raise
    except Exception as e:  # safetensors' own errors derive from Exception only
        raise ValueError(f"{path}: not a readable safetensors file ({type(e).__name__})") from e
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # a tensor of another shape
        raise ValueError(f"{path}: weights do not fit the model ({one_line(e)[:300]})") from e
    if missing or unexpected:
        raise ValueError(f"{path}: missing weights {missing}, unexpected weights {unexpected}")


def save_optimizer(opt: torch.optim.Optimizer, path: str | Path) -> None:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            t = val if isinstance(val, torch.Tensor) else torch.tensor(val)
            tensors[f"state.{idx}.{key}"] = t.detach().contiguous().cpu()
    meta = {"param_groups": json.dumps(sd["param_groups"])}
    save_file(tensors, str(path), metadata=meta)


def load_optimizer(opt: torch.optim.Optimizer, path: str | Path) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name in f.keys():
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = f.get_tensor(name)
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def save_rng(path: str | Path) -> None:
    save_file({"torch_cpu": torch.get_rng_state()}, str(path))


def load_rng(path: str | Path) -> None:
    torch.set_rng_state(load_file(str(path))["torch_cpu"])
