"""Adapter: Hugging Face ``ViltForQuestionAnswering`` (ViLT: image patches and question tokens
in one Transformer) -> a vqa bundle with one graph.

``vilt.onnx``: (input_ids (B, T), attention_mask (B, T), pixel_values (B, 3, H, W), pixel_mask
(B, H, W)) -> logits (B, A) over the ``id2label`` answers. Batch, question length and the
image's height and width are all dynamic: ViLT's processor keeps each image's aspect ratio
(shorter side to 384, longer capped at 640, both multiples of 32) and zero-pads a batch to its
largest image, the pixel mask marking each image's own pixels.

What differs from ``ViltEmbeddings.visual_embed``, and why the logits are the same:
- transformers gathers each image's valid patches (``nonzero``) and fills the rest of the
  batch's longest row with *randomly chosen* padding patches (``torch.multinomial``); here every
  patch of the padded grid is kept in place. Padding patches are masked out of attention in
  both (their softmax weight is exactly 0), and attention does not depend on the order of the
  keys, so every unmasked position gets the same result.
- each image's position embeddings are the (image_size / patch)^2 grid bilinearly
  interpolated (align_corners) to that image's own patch grid, then zero-padded; transformers
  loops over the images, here the interpolation is two per-image weight matrices built from
  the valid sizes (an einsum), which exports as one graph for any batch.
- the processor gives one question's token_type_ids as zeros; they are not an input;
- the last layer is computed for the first position alone (all positions' keys and values,
  one query): the pooler reads nothing else.
A config with ``max_image_length`` > 0 makes transformers sample that many patches at random
(in eval too): such a model is refused, its outputs are not reproducible.

The answer score is sigmoid(logit), each answer on its own: ViLT is trained with binary
cross-entropy on VQA's soft scores, and transformers' VQA pipeline reports ``logits.sigmoid()``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfast.bundle import write_manifest
from mmfast.preprocess import PreprocessConfig, pad_batch, preprocess
from mmfast.tokenizer import SpecialTokens

from ..onnx_export import GraphSpec, OutputValueError, export_graphs
from . import common
from .common import provenance, save_tokenizer
from .model_dir import ModelDir, ModelDirError

__all__ = ["ViltVQA", "export_bundle", "load"]

GRAPH = "vilt.onnx"
INPUTS = ["input_ids", "attention_mask", "pixel_values", "pixel_mask"]


def load(d: ModelDir) -> nn.Module:
    """The model of a ViLT VQA directory, checked to be one this adapter cuts."""
    from transformers import ViltForQuestionAnswering

    model = common.from_pretrained(d, ViltForQuestionAnswering)
    cfg = model.config
    if isinstance(cfg.max_image_length, int) and cfg.max_image_length > 0:
        raise ModelDirError(
            f"{d.path}: config.json's max_image_length {cfg.max_image_length} makes transformers "
            "sample image patches at random (even in eval); only -1 (every patch) is exported"
        )
    for key in ("image_size", "patch_size"):
        if not isinstance(getattr(cfg, key), int):
            raise ModelDirError(f"{d.path}: config.json's {key} must be one int (a square)")
    if cfg.image_size % cfg.patch_size:
        raise ModelDirError(
            f"{d.path}: image_size {cfg.image_size} is not a multiple of patch_size "
            f"{cfg.patch_size}"
        )
    if not cfg.id2label or len(cfg.id2label) != cfg.num_labels:
        raise ModelDirError(
            f"{d.path}: config.json has no id2label for its {cfg.num_labels} answers"
        )
    return model.eval()


def _interp_weights(n: torch.Tensor, out: int, grid: int) -> torch.Tensor:
    """(B, out, grid) weights of bilinear align_corners interpolation from `grid` positions to
    n[b] positions (n: (B,) int), zero past n[b]: row t takes source position
    t * (grid - 1) / (n - 1) as ``F.interpolate`` computes it (float32 scale and product),
    from floor(src) and the next position (clamped to the grid)."""
    t = torch.arange(out, device=n.device, dtype=torch.float32)[None, :]  # (1, out)
    nf = n.to(torch.float32)[:, None]  # (B, 1)
    # align_corners: scale (in - 1) / (out - 1), 0 when the output is one position
    scale = torch.where(nf > 1, (grid - 1) / (nf - 1).clamp(min=1), torch.zeros_like(nf))
    src = scale * t  # (B, out)
    lo = src.floor()
    frac = src - lo
    lo = lo.clamp(max=grid - 1)
    hi = (lo + 1).clamp(max=grid - 1)
    g = torch.arange(grid, device=n.device, dtype=torch.float32)[None, None, :]  # (1, 1, grid)
    w = (1 - frac)[..., None] * (g == lo[..., None]) + frac[..., None] * (g == hi[..., None])
    return w * (t < nf)[..., None]  # (B, out, grid)


class ViltVQA(nn.Module):
    """(input_ids, attention_mask, pixel_values, pixel_mask) -> logits; see the docstring."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.emb = model.vilt.embeddings
        self.layers = model.vilt.encoder.layer
        self.norm = model.vilt.layernorm
        self.pooler = model.vilt.pooler
        self.classifier = model.classifier
        self.patch = int(model.config.patch_size)
        self.grid = int(model.config.image_size) // self.patch

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) int64
        attention_mask: torch.Tensor,  # (B, T) int64
        pixel_values: torch.Tensor,  # (B, 3, H, W) float32
        pixel_mask: torch.Tensor,  # (B, H, W) int64
    ) -> torch.Tensor:
        e = self.emb
        types = e.token_type_embeddings.weight  # (2, C): text 0, image 1
        text = e.text_embeddings(input_ids=input_ids) + types[0]  # (B, T, C)
        x = e.patch_embeddings.projection(pixel_values)  # (B, C, h, w)
        b, c, h, w = x.shape
        # visual_embed's nearest-neighbour mask per patch: the patch's top-left pixel
        # (H = h * patch: the processor's sizes are multiples of the patch size)
        pm = pixel_mask[:, :: self.patch, :: self.patch][:, :h, :w]  # (B, h, w)
        rows = pm[:, :, 0].sum(1)  # (B,) valid patch rows (visual_embed's x_h)
        cols = pm[:, 0, :].sum(1)  # (B,) valid patch columns (x_w)
        spatial = e.position_embeddings[0, 1:].reshape(self.grid, self.grid, c)  # (g, g, C)
        wh = _interp_weights(rows, h, self.grid)  # (B, h, g)
        ww = _interp_weights(cols, w, self.grid)  # (B, w, g)
        pos = torch.einsum("bip,pqc,bjq->bcij", wh, spatial, ww)  # (B, C, h, w)
        x = (x + pos).flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = e.cls_token[0, 0] + e.position_embeddings[0, 0]  # (C,)
        image = torch.cat([cls.expand(b, 1, c), x], dim=1) + types[1]  # (B, 1 + h*w, C)
        hidden = torch.cat([text, image], dim=1)  # (B, L, C)
        keep = torch.cat(
            [attention_mask, torch.ones_like(attention_mask[:, :1]), pm.flatten(1)], dim=1
        )  # (B, L)
        # additive mask as transformers builds it: 0 where attended, float32's min elsewhere
        bias = (1.0 - keep[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.layers[:-1]:
            hidden = layer(hidden, attention_mask=bias)[0]
        first = _last_layer_first_token(self.layers[-1], hidden, bias)  # (B, 1, C)
        pooled = self.pooler(self.norm(first))  # (B, C): the first (text [CLS]) position
        logits: torch.Tensor = self.classifier(pooled)  # (B, A)
        return logits


def _last_layer_first_token(layer: nn.Module, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ViltLayer's forward for position 0 alone, (B, L, C) -> (B, 1, C): the pooler reads
    nothing else, so the last layer needs every position's keys and values but only the first
    one's query, attention output and MLP (about 10/12 of that layer's work saved, ~7% of the
    model's). Same operations as ViltLayer in the same order (pre-LN attention, residual,
    LN, MLP, residual), on the one row."""
    sa = layer.attention.attention  # ViltSelfAttention
    h, d = sa.num_attention_heads, sa.attention_head_size
    b = x.shape[0]
    ln = layer.layernorm_before(x)  # (B, L, C)
    q = sa.query(ln[:, :1]).view(b, 1, h, d).transpose(1, 2)  # (B, H, 1, D)
    k = sa.key(ln).view(b, -1, h, d).transpose(1, 2)  # (B, H, L, D)
    v = sa.value(ln).view(b, -1, h, d).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d) + bias  # (B, H, 1, L)
    ctx = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, H, 1, D)
    ctx = ctx.transpose(1, 2).reshape(b, 1, h * d)
    y = layer.attention.output(ctx, ln[:, :1]) + x[:, :1]  # first residual
    out: torch.Tensor = layer.output(layer.intermediate(layer.layernorm_after(y)), y)
    return out


# check questions: short, long (cut at max_len as truncation=True does), unseen characters
CHECK_QUESTIONS = (
    "what colour is the circle ?",
    "how many shapes are there ?",
    "is the red square to the left of the blue triangle ? " * 6,
    "什么 颜色 ? 🙂",
)


def _example(model: nn.Module, vocab: int, side: int) -> Any:
    """example(batch) for the GraphSpec: questions of two lengths, images of two sizes (the
    smaller padded), so the exported graph has seen padding in both."""
    patch = int(model.config.patch_size)

    def make(b: int) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(b)
        t = 7
        ids = torch.randint(0, vocab, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.int64)
        mask[0, 4:] = 0
        hh, ww = side, side + 2 * patch
        pixels = torch.randn(b, 3, hh, ww, generator=g)
        pmask = torch.ones(b, hh, ww, dtype=torch.int64)
        if b > 1:
            pmask[1, hh - patch :, :] = 0
            pmask[1, :, ww - 2 * patch :] = 0
            pixels[1] *= pmask[1]
        return ids, mask, pixels, pmask

    return make


def specs(model: nn.Module, side: int) -> list[GraphSpec]:
    vocab = int(model.config.vocab_size)
    dyn = {
        "input_ids": {0: "batch", 1: "question"},
        "attention_mask": {0: "batch", 1: "question"},
        "pixel_values": {0: "batch", 2: "height", 3: "width"},
        "pixel_mask": {0: "batch", 1: "height", 2: "width"},
    }
    return [
        GraphSpec(
            GRAPH,
            ViltVQA(model).eval(),
            INPUTS,
            ["logits"],
            dyn,
            example=_example(model, vocab, side),
            atol=1e-4,
            rtol=1e-4,
            notes="ViLT: question tokens + every image patch (padding masked) -> answer logits",
        )
    ]


def _hf_logits(model: nn.Module, enc: dict[str, torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=enc["pixel_values"],
            pixel_mask=enc["pixel_mask"],
        )
    return out.logits.double().numpy()


def check_reference(
    bundle: Path, model: nn.Module, tok: Any, images: list[np.ndarray], max_len: int
) -> dict[str, Any]:
    """The bundle, through mmfast's runtime (tokenizer.json, preprocessing, padding), against
    the Hugging Face model on the same questions and images, as ViltProcessor would feed it:
    token ids identical, every answer's sigmoid score within a bound derived from the float32
    model's own error against float64, the same best answer unless float64 cannot separate it.
    """
    from mmfast.vqa import VQA

    vqa = VQA.load(bundle, threads=1)
    model64 = copy.deepcopy(model).double()
    cfg = vqa.preprocess_config
    pixels, pmask = pad_batch([preprocess(im, cfg) for im in images])
    n = len(images)
    err32 = err = 0.0
    swaps = 0
    for q in CHECK_QUESTIONS:
        want = tok(q, truncation=True, max_length=max_len).input_ids
        got = vqa.tokens([q], max_len)[0].tolist()
        if got[: len(want)] != want or any(i != vqa.tokenizer.pad_id for i in got[len(want) :]):
            raise OutputValueError(
                f"question {q[:40]!r}: the bundle's tokens {got[:12]}... differ from the "
                f"Hugging Face tokenizer's {want[:12]}..."
            )
        enc = {
            "input_ids": torch.tensor([want] * n),
            "attention_mask": torch.ones(n, len(want), dtype=torch.int64),
            "pixel_values": torch.from_numpy(pixels),
            "pixel_mask": torch.from_numpy(pmask),
        }
        s32 = 1 / (1 + np.exp(-_hf_logits(model, enc)))
        enc64 = {**enc, "pixel_values": enc["pixel_values"].double()}
        s64 = 1 / (1 + np.exp(-_hf_logits(model64, enc64)))
        answers = vqa.answer_many(images, [[q]] * n, top_k=len(vqa.answers))
        got_scores = np.zeros_like(s64)
        for i, per_image in enumerate(answers):
            for text, score in per_image[0].top:
                got_scores[i, vqa.answers.index(text)] = score
        err32 = max(err32, float(np.abs(s32 - s64).max()))
        err = max(err, float(np.abs(got_scores - s64).max()))
        for i in range(n):
            best, ref = int(got_scores[i].argmax()), int(s32[i].argmax())
            if best != ref:
                swaps += 1
                if abs(s64[i, best] - s64[i, ref]) > 2 * _bound(err32):
                    raise OutputValueError(
                        f"question {q[:40]!r}, check image {i}: the bundle answers "
                        f"{vqa.answers[best]!r}, the Hugging Face model {vqa.answers[ref]!r}"
                    )
    bound = _bound(err32)
    if err > bound:
        raise OutputValueError(
            f"{GRAPH}: answer scores differ from the float64 Hugging Face model by up to "
            f"{err:.3g}, more than {bound:.3g} (twice the float32 model's own {err32:.3g})"
        )
    return {
        "images": n,
        "image_sizes": [list(im.shape[:2]) for im in images],
        "questions": len(CHECK_QUESTIONS),
        "tokens_identical": True,
        "score_max_abs_err_vs_float64": err,
        "hf_float32_score_max_abs_err_vs_float64": err32,
        "score_bound": bound,
        "best_answer_swaps_within_bound": swaps,
    }


def _bound(err32: float) -> float:
    """Twice the float32 Hugging Face model's own error, plus 64 float32 ulps of a score."""
    return 2 * err32 + 64 * float(np.finfo(np.float32).eps)


def _check_images(n: int, side: int) -> list[np.ndarray]:
    """Generated scenes at several aspect ratios (so a batch is padded), uint8 (H, W, 3)."""
    base = common.check_images(n, side)
    out = []
    for i, im in enumerate(base):
        h, w = im.shape[:2]
        crop = [(h, w), (h, w * 2 // 3), (h * 2 // 3, w), (h // 2, w)][i % 4]
        out.append(np.ascontiguousarray(im[: crop[0], : crop[1]]))
    return out


def export_bundle(
    d: ModelDir, tmp: Path, *, arch: str, kind: str, check_images: int = 4
) -> dict[str, Any]:
    """Write the whole vqa bundle of the ViLT directory `d` into the staging directory `tmp`
    (vilt.onnx, tokenizer.json, answers.txt, manifest.json), validated; returns the manifest."""
    from transformers import AutoTokenizer

    preprocess_cfg = PreprocessConfig.from_hf(d.processor)
    if preprocess_cfg.resize_mode != "shortest_edge_capped":
        raise ModelDirError(
            f"{d.path}: preprocessor_config.json is not ViLT's (shortest_edge with size_divisor)"
        )
    model = load(d)
    cfg = model.config
    if preprocess_cfg.size_divisor % cfg.patch_size:
        raise ModelDirError(
            f"{d.path}: the processor's size_divisor {preprocess_cfg.size_divisor} is not a "
            f"multiple of patch_size {cfg.patch_size} (images would end mid-patch)"
        )
    n_tokens, cleanup, ids = save_tokenizer(d, tmp, int(cfg.vocab_size))
    tok = AutoTokenizer.from_pretrained(d.path, local_files_only=True)
    if tok.pad_token_id is None:
        raise ModelDirError(f"{d.path}: the tokenizer has no pad token (a batch's padding)")
    limit = getattr(tok, "model_max_length", None)
    max_len = int(cfg.max_position_embeddings)
    if isinstance(limit, int) and 0 < limit < max_len:
        max_len = limit
    labels = [str(cfg.id2label[i]) for i in range(cfg.num_labels)]
    if any("\n" in a or "\r" in a for a in labels):
        raise ModelDirError(f"{d.path}: an id2label answer holds a line break")
    (tmp / "answers.txt").write_text("".join(a + "\n" for a in labels), encoding="utf-8")
    special = SpecialTokens(
        pad=int(tok.pad_token_id),
        bos=tok.cls_token_id if tok.cls_token_id is not None else ids["pad"],
        eos=tok.sep_token_id if tok.sep_token_id is not None else ids["pad"],
        unk=ids.get("unk", ids["pad"]),
    )
    graphs = specs(model, preprocess_cfg.resize or cfg.image_size)
    report, sections = export_graphs(graphs, tmp)
    manifest: dict[str, Any] = {
        "task": "vqa",
        "kind": kind,
        "config": {
            "architecture": arch,
            "hidden_size": int(cfg.hidden_size),
            "layers": int(cfg.num_hidden_layers),
            "patch_size": int(cfg.patch_size),
            "position_grid": int(cfg.image_size) // int(cfg.patch_size),
            "text_vocab_size": int(cfg.vocab_size),
            "tokenizer_size": n_tokens,
            "answers": len(labels),
            "score": "sigmoid(logits)",
        },
        **common.bundle_sections(sections, preprocess_cfg, cleanup, special),
        "vqa": {"max_len": max_len, "activation": "sigmoid"},
        "answers": "answers.txt",
        "validation": report,
        "provenance": provenance(d),
    }
    write_manifest(tmp, manifest)
    images = _check_images(max(check_images, 2), preprocess_cfg.resize or cfg.image_size)
    report["hf_reference"] = check_reference(tmp, model, tok, images, max_len)
    manifest["validation"] = report
    write_manifest(tmp, manifest)
    return manifest
