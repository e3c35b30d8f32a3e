"""Adapter: Hugging Face dual encoders (``CLIPModel``, ``SiglipModel``) -> a retrieval bundle.

- ``image_tower.onnx``: images (B, 3, S, S) -> image_embedding (B, E), the vision model's
  pooled output through ``visual_projection`` (CLIP; SigLIP's head is inside its vision model),
  L2-normalised in the graph;
- ``text_tower.onnx``: tokens (B, T) int64 -> text_embedding (B, E), normalised likewise.

No attention mask goes into the text tower, and none is needed for the embeddings to equal the
model's with its mask: CLIP's text Transformer is causal and pools at the first end-of-text
token (or, in configs with ``eos_token_id`` 2, saved before transformers 4.31, at the highest
id), so padding after it is never attended by the pooled position; SigLIP was trained on texts
padded to ``max_length`` without a mask and pools the last position, so the runtime pads every
text to ``max_len`` (``retrieval.pad_to_max_len``), as its processor does with
``padding="max_length"``.

Zero-shot classification reads ``retrieval.logit_scale`` (exp of the model's learnt
temperature), ``logit_bias`` (SigLIP) and ``activation`` (CLIP: softmax over the labels,
SigLIP: a sigmoid each), so the runtime's probabilities are ``logits_per_image`` 's.

Validation, in the manifest's ``validation`` report: each graph against the PyTorch module it
was exported from (batch 1 and 3), and the bundle through mmfast's runtime against the Hugging
Face model's own ``forward`` (``image_embeds``, ``text_embeds``, ``logits_per_image``) on
generated images and captions tokenised by the model's tokenizer: cosine of each embedding
pair >= 1 - 1e-4 (the issue's bar; the float32 error of these models is ~1e-6) and the same
image ranking for every text.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfast.bundle import write_manifest
from mmfast.preprocess import PreprocessConfig, preprocess_batch
from mmfast.tokenizer import SpecialTokens

from ..onnx_export import ExportValidationError, GraphSpec, export_graphs
from . import common
from .model_dir import ModelDir, ModelDirError

__all__ = ["ImageTower", "TextTower", "export_bundle", "load"]

# each embedding within this cosine of transformers' (the issue's bar)
COSINE_TOLERANCE = 1e-4


def load(d: ModelDir, arch: str) -> nn.Module:
    import transformers

    model: nn.Module = common.from_pretrained(d, getattr(transformers, arch))
    return model.float()


def _is_siglip(model: nn.Module) -> bool:
    return type(model).__name__.startswith("Siglip")


class ImageTower(nn.Module):
    """images (B, 3, S, S) -> image_embedding (B, E), unit length."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision = model.vision_model
        # SigLIP's pooled output is already the embedding (its attention-pooling head)
        self.proj = getattr(model, "visual_projection", None) or nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.vision(pixel_values=images).pooler_output
        e = self.proj(pooled)
        return e / e.norm(p=2, dim=-1, keepdim=True)


class TextTower(nn.Module):
    """tokens (B, T) int64 -> text_embedding (B, E), unit length (see the module docstring for
    why no mask)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.text = model.text_model
        self.proj = getattr(model, "text_projection", None) or nn.Identity()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.text(input_ids=tokens).pooler_output
        e = self.proj(pooled)
        return e / e.norm(p=2, dim=-1, keepdim=True)


def _max_len(model: nn.Module, tok_max: int | None) -> int:
    n = int(model.config.text_config.max_position_embeddings)
    if tok_max is not None and 0 < tok_max < n:
        n = tok_max
    return n


def _specs(model: nn.Module, side: int, max_len: int, vocab: int) -> list[GraphSpec]:
    def images(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, 3, side, side),)

    def tokens(b: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(b)
        return (torch.randint(0, vocab, (b, min(max_len, 7 + b)), generator=g),)

    return [
        GraphSpec(
            "image_tower.onnx",
            ImageTower(model).eval(),
            ["images"],
            ["image_embedding"],
            {"images": {0: "batch"}},
            images,
            notes="the vision model's pooled output, projected and L2-normalised",
        ),
        GraphSpec(
            "text_tower.onnx",
            TextTower(model).eval(),
            ["tokens"],
            ["text_embedding"],
            {"tokens": {0: "batch", 1: "tokens"}},
            tokens,
            notes="the text model's pooled output, projected and L2-normalised; no mask",
        ),
    ]


def _check_texts() -> list[str]:
    """Captions of the check images, and a few other texts of varied lengths."""
    from ..shapes import ShapesConfig, captions, sample_scene

    cfg = ShapesConfig(size=64)
    texts = [captions(sample_scene(cfg, i), cfg.size)[0] for i in range(4)]
    return [*texts, "a photo", "two small shapes, one of them red, on a plain grey background."]


def _check_bundle(
    bundle: Path, model: nn.Module, tok: Any, images: list[np.ndarray], pixels: torch.Tensor
) -> dict[str, Any]:
    """The bundle through mmfast's runtime against the Hugging Face model's forward."""
    from mmfast.retriever import Retriever

    texts = _check_texts()
    r = Retriever.load(bundle, threads=1)
    got_img = r.embed_images(images)["image_embedding"].astype(np.float64)
    got_txt = r.embed_texts(texts)["text_embedding"].astype(np.float64)
    pad = "max_length" if _is_siglip(model) else True
    enc = tok(texts, padding=pad, truncation=True, max_length=r.max_len, return_tensors="pt")
    with torch.no_grad():
        out = model(
            input_ids=enc["input_ids"],
            pixel_values=pixels,
            **({} if _is_siglip(model) else {"attention_mask": enc["attention_mask"]}),
        )
    ref_img = out.image_embeds.double().numpy()
    ref_txt = out.text_embeds.double().numpy()
    report: dict[str, Any] = {"images": len(images), "texts": len(texts)}
    for name, got, ref in (("image", got_img, ref_img), ("text", got_txt, ref_txt)):
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        worst = float(1 - cos.min())
        report[f"{name}_max_cosine_distance"] = worst
        if worst > COSINE_TOLERANCE:
            raise ExportValidationError(
                f"{name} embeddings: cosine distance to transformers' up to {worst:.3g} "
                f"(> {COSINE_TOLERANCE})"
            )
    ref_logits = out.logits_per_image.double().numpy()  # (images, texts)
    got_logits = r.logit_scale * got_img @ got_txt.T + r.logit_bias
    report["logits_max_abs_err"] = float(np.abs(got_logits - ref_logits).max())
    for j in range(len(texts)):
        if list(np.argsort(-got_logits[:, j], kind="stable")) != list(
            np.argsort(-ref_logits[:, j], kind="stable")
        ):
            raise ExportValidationError(f"text {texts[j]!r}: the images rank otherwise")
    report["rankings_identical"] = True
    return report


def export_bundle(d: ModelDir, tmp: Path, *, arch: str, kind: str, check_images: int) -> None:
    """Write the retrieval bundle of a CLIPModel / SiglipModel directory into `tmp`."""
    from transformers import AutoTokenizer

    preprocess = PreprocessConfig.from_hf(d.processor)
    model = load(d, arch)
    siglip = _is_siglip(model)
    vocab_size = int(model.config.text_config.vocab_size)
    n_tokens, cleanup, ids = common.save_tokenizer(d, tmp, vocab_size)
    tok = AutoTokenizer.from_pretrained(d.path, local_files_only=True)
    max_len = _max_len(model, getattr(tok, "model_max_length", None))
    if "pad" not in ids and not siglip:
        # CLIP pads after the end-of-text token; any id does, the eos is what CLIP's uses
        ids["pad"] = ids.get("eos", 0)
    missing = [k for k in ("pad", "eos") if k not in ids]
    if missing:
        raise ModelDirError(f"{d.path}: the tokenizer has no {' or '.join(missing)} token")
    graphs = _specs(model, preprocess.size, max_len, n_tokens)
    report, sections = export_graphs(graphs, tmp)
    scale = float(model.logit_scale.detach().exp())
    bias = float(model.logit_bias.detach()) if siglip else 0.0
    special = SpecialTokens(
        pad=ids["pad"], bos=ids.get("bos", ids["eos"]), eos=ids["eos"], unk=ids.get("unk", 0)
    )
    if not math.isfinite(scale):
        raise ModelDirError(f"{d.path}: logit_scale is not finite")
    manifest: dict[str, Any] = {
        "task": "retrieval",
        "kind": kind,
        "config": {
            "architecture": arch,
            "vocab_size": n_tokens,
            "projection_dim": int(getattr(model.config, "projection_dim", 0) or 0),
            "text_max_position_embeddings": int(model.config.text_config.max_position_embeddings),
        },
        **common.bundle_sections(sections, preprocess, cleanup, special),
        "retrieval": {
            "logit_scale": scale,
            "logit_bias": bias,
            "rerank": False,
            "max_len": max_len,
            "activation": "sigmoid" if siglip else "softmax",
            "pad_to_max_len": siglip,
        },
        "validation": report,
        "provenance": common.provenance(d),
    }
    write_manifest(tmp, manifest)
    images = common.check_images(check_images, preprocess.size)
    pixels = torch.from_numpy(preprocess_batch(images, preprocess))
    report["reference"] = _check_bundle(tmp, model, tok, images, pixels)
    manifest["validation"] = report
    write_manifest(tmp, manifest)
