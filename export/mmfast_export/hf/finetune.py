"""Fine-tune a small Hugging Face VisionEncoderDecoder (ViT + GPT-2) on a COCO-format caption
dataset (the generated shapes data), with transformers' own model and loss, and save it with
``save_pretrained``: a model directory of the kind a user brings, whose captions a person can
read, for ``mmfast export`` (the demo's Hugging Face step).

Images go through the model's own preprocessing (``preprocessor_config.json``, reproduced bit
for bit by :mod:`mmfast.preprocess`); the tokenizer is a byte-level BPE learnt from the
training captions (:mod:`.build`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfast.preprocess import PreprocessConfig, load_rgb, preprocess

from ..coco import resolve_splits
from .build import build_vit_gpt2

__all__ = ["FinetuneResult", "finetune_clip", "finetune_vit_gpt2"]


@dataclass
class FinetuneResult:
    model_dir: Path
    steps: int
    seconds: float
    first_loss: float
    last_loss: float  # mean of the last 20 steps


def _captions(json_path: Path) -> tuple[list[str], list[list[str]]]:
    """(image file names, their captions) of a COCO captions file."""
    coco: dict[str, Any] = json.loads(json_path.read_text())
    caps: dict[int, list[str]] = {}
    for a in coco["annotations"]:
        caps.setdefault(int(a["image_id"]), []).append(str(a["caption"]).strip())
    images = sorted((im for im in coco["images"] if int(im["id"]) in caps), key=lambda i: i["id"])
    return [str(im["file_name"]) for im in images], [caps[int(im["id"])] for im in images]


def finetune_vit_gpt2(
    data_dir: str | Path,
    out: str | Path,
    *,
    seconds: float = 150.0,
    max_steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    limit: int | None = 3000,
    seed: int = 0,
) -> FinetuneResult:
    """Train the ``small`` ViT + GPT-2 on `data_dir`'s training captions for `seconds` (or
    max_steps) and save it to `out`."""
    import transformers as tf

    splits = resolve_splits(data_dir)
    names, captions = _captions(splits["train"].captions_json)
    if limit is not None:
        names, captions = names[:limit], captions[:limit]
    out = Path(out)
    texts = [c for cs in captions for c in cs]
    build_vit_gpt2(out, "small", seed=seed, texts=texts)
    model = tf.VisionEncoderDecoderModel.from_pretrained(out)
    tok = tf.AutoTokenizer.from_pretrained(out)
    cfg = PreprocessConfig.from_hf(json.loads((out / "preprocessor_config.json").read_text()))
    root = splits["train"].image_root
    pixels = torch.from_numpy(np.stack([preprocess(load_rgb(root / n), cfg) for n in names]))
    eos = tok.eos_token_id
    encoded = [[[*tok(c).input_ids, eos] for c in cs] for cs in captions]

    def batch_loss(rng: np.random.Generator) -> torch.Tensor:
        idx = rng.integers(0, len(names), batch_size)
        seqs = [encoded[i][rng.integers(0, len(encoded[i]))] for i in idx]
        labels = torch.full((batch_size, max(map(len, seqs))), -100, dtype=torch.long)
        for r, s in enumerate(seqs):
            labels[r, : len(s)] = torch.tensor(s)
        loss: torch.Tensor = model(pixel_values=pixels[idx], labels=labels).loss
        return loss

    return _train(model, batch_loss, out, seconds=seconds, max_steps=max_steps, lr=lr, seed=seed)


def _train(
    model: Any,
    batch_loss: Callable[[np.random.Generator], torch.Tensor],
    out: Path,
    *,
    seconds: float,
    max_steps: int,
    lr: float,
    seed: int,
) -> FinetuneResult:
    """AdamW (warm-up over 50 steps, gradients clipped at 1) on batch_loss(rng) for `seconds`
    or max_steps, then save_pretrained to `out`."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    losses: list[float] = []
    t0 = time.perf_counter()
    step = 0
    while step < max_steps and time.perf_counter() - t0 < seconds:
        loss = batch_loss(rng)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        step += 1
    model.eval()
    model.save_pretrained(out)
    return FinetuneResult(
        out, step, time.perf_counter() - t0, losses[0], float(np.mean(losses[-20:]))
    )


def finetune_clip(
    data_dir: str | Path,
    out: str | Path,
    *,
    seconds: float = 60.0,
    max_steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    limit: int | None = 3000,
    seed: int = 0,
) -> FinetuneResult:
    """Train the ``small`` CLIP (:mod:`.build_clip`) contrastively, with transformers' own
    loss (``CLIPModel(..., return_loss=True)``), on `data_dir`'s training images and captions
    for `seconds` (or max_steps) and save it to `out`."""
    import transformers as tf

    from .build_clip import build_clip

    splits = resolve_splits(data_dir)
    names, captions = _captions(splits["train"].captions_json)
    if limit is not None:
        names, captions = names[:limit], captions[:limit]
    out = Path(out)
    build_clip(out, "small", seed=seed, texts=[c for cs in captions for c in cs])
    model = tf.CLIPModel.from_pretrained(out)
    tok = tf.AutoTokenizer.from_pretrained(out)
    cfg = PreprocessConfig.from_hf(json.loads((out / "preprocessor_config.json").read_text()))
    root = splits["train"].image_root
    pixels = torch.from_numpy(np.stack([preprocess(load_rgb(root / n), cfg) for n in names]))

    def batch_loss(rng: np.random.Generator) -> torch.Tensor:
        # distinct images: a repeated one would be its own negative
        idx = rng.choice(len(names), size=min(batch_size, len(names)), replace=False)
        texts = [captions[i][rng.integers(0, len(captions[i]))] for i in idx]
        enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
        loss: torch.Tensor = model(**enc, pixel_values=pixels[idx], return_loss=True).loss
        return loss

    return _train(model, batch_loss, out, seconds=seconds, max_steps=max_steps, lr=lr, seed=seed)
