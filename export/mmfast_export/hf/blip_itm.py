"""Adapter: Hugging Face ``BlipForImageTextRetrieval`` (BLIP image-text matching: a ViT vision
model, a BERT-style text encoder whose layers cross-attend to the image, and the ITM head) ->
a stand-alone ``rerank`` bundle (:class:`mmfast.Reranker`).

What ``model(input_ids, pixel_values, attention_mask=..., use_itm_head=True)`` computes
(transformers 4.57 and 5.x alike), and so what the two graphs compute:

- ``image_embeds = vision_model(pixel_values).last_hidden_state``: [CLS] + every patch, after
  ``post_layernorm``, (B, N = 1 + P, C_vis). Every image position is attended (mask of ones).
- ``text_encoder(input_ids, attention_mask, encoder_hidden_states=image_embeds)``: the text
  model run bidirectionally (``is_decoder=False``: padding mask only, no causal mask), each
  layer's cross-attention over ``image_embeds``; ``itm_head`` (Linear C -> 2) on the first
  token's last hidden state; P(match) = softmax(logits)[:, 1].
- ``input_ids`` are used as given: neither version swaps [CLS] for BLIP's [ENC] (the original
  BLIP code does), and BlipProcessor's tokenizer gives "[CLS] text [SEP]". The bundle's
  tokenizer.json is that tokenizer, so its ids are the same.

Graphs:

- ``image_encoder.onnx``: ``images`` (B, 3, S, S) -> ``image_features`` (B, N, C_vis),
  the ``image_embeds`` above (computed once per image, kept by the caller).
- ``itm.onnx``: ``tokens`` (B, T) int64, ``token_mask`` (B, T) int64 (1 = token, 0 = padding),
  ``image_features`` (B, N, C_vis) -> ``score`` (B,) = P(match), ``itm_logits`` (B, 2).
  Dynamic B and T. The text encoder is restated on the model's own modules (:class:`ITM`), as
  :mod:`.bert` restates the captioner's step: plain tensors in and out, no transformers mask or
  cache machinery in the graph (it differs between 4.57 and 5.x).

Validation (the manifest's ``validation``): each graph, ONNX Runtime against PyTorch
(:func:`~mmfast_export.onnx_export.export_graphs`); then ``hf_reference``: the finished bundle run
by mmfast's runtime (tokenizer.json, numpy preprocessing, ONNX Runtime) on generated images and
several texts (one longer than ``max_len``, cut as ``truncation=True``) against the Hugging
Face model's own forward in float32 and float64: the bundle's token ids must equal the Hugging
Face tokenizer's, its scores must be within :func:`score_bound` of the float64 reference, and
its ranking of the images for each text must be the float32 model's.
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
from mmfast.preprocess import PreprocessConfig, preprocess_batch
from mmfast.tokenizer import SpecialTokens

from ..onnx_export import ExportValidationError, GraphSpec, OutputValueError, export_graphs
from . import common
from .common import check_images as make_check_images
from .common import provenance, save_tokenizer
from .graphs import split_heads
from .model_dir import ModelDir, ModelDirError

__all__ = [
    "ITM",
    "ImageFeatures",
    "RankingMismatchError",
    "TokenizationMismatchError",
    "check_reference",
    "export_bundle",
    "load",
    "score_bound",
    "specs",
]

VISION, TEXT = "blip_vision_model", "blip_text_model"
# Texts the export checks the bundle on; a long one (longer than max_len) is added
CHECK_TEXTS = (
    "a red circle left of a blue square",
    "two green triangles",
    "a photo of a cat on a sofa",
)
# Images the ranking is checked over, at least (the check_images argument may ask for more)
MIN_RANK_IMAGES = 8


class TokenizationMismatchError(ExportValidationError):
    """The bundle's token ids for a text differ from the Hugging Face tokenizer's."""


class RankingMismatchError(ExportValidationError):
    """The bundle ranks a text's candidate images otherwise than the Hugging Face model."""


def load(d: ModelDir) -> nn.Module:
    """The model of a BLIP ITM directory, checked to be one this adapter cuts (eval mode)."""
    from transformers import BlipForImageTextRetrieval

    common.check_sub_configs(d, {"vision_config": VISION, "text_config": TEXT})
    model = common.from_pretrained(d, BlipForImageTextRetrieval)
    enc = model.text_encoder
    if not all(hasattr(layer, "crossattention") for layer in enc.encoder.layer):
        # BlipTextLayer builds its cross-attention only when text_config.is_decoder is true;
        # without it the ITM forward fails in transformers too
        raise ModelDirError(
            f"{d.path}: the text encoder has no cross-attention (text_config.is_decoder is "
            "false): it cannot attend to the image"
        )
    # transformers 4.x also builds relative position scores into the attention; ITM does not
    kinds = {
        getattr(m, "position_embedding_type", "absolute")
        for m in (enc.embeddings, *(layer.attention.self for layer in enc.encoder.layer))
    }
    if kinds != {"absolute"}:
        raise ModelDirError(
            f"{d.path}: the text encoder uses position_embedding_type {sorted(kinds)}: only "
            "'absolute' is supported"
        )
    return model.eval()


class ImageFeatures(nn.Module):
    """images (B, 3, S, S) -> image_features (B, N, C_vis): the vision model's last hidden
    state ([CLS] + patches, after post_layernorm), what the ITM forward cross-attends to."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision = model.vision_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.vision(pixel_values=images).last_hidden_state
        return out


class CrossTextEncoder(nn.Module):
    """BLIP's text encoder (``text_encoder``: BERT layers with cross-attention to the image)
    restated on the model's own modules: (tokens, token_mask, image_features) -> the hidden
    states (B, T, C) and the additive padding bias (B, T). Shared by the ITM head here and BLIP
    VQA's question encoder (:mod:`.blip_vqa`).

    Per layer (x (B, T, C) the text's hidden states; LN(a + b) is the ``*.output`` modules'):
      x = LN(x + W_o softmax(Q K^T / sqrt(D) + mask) V)        self-attention, padding masked
      x = LN(x + W_o softmax(Q K_img^T / sqrt(D)) V_img)       cross-attention, image all ones
      x = LN(x + W_2 act(W_1 x))                               feed-forward
    first_only: the last layer computes position 0 alone (keys and values still from every
    token), for a head that reads [CLS] only; the states are then (B, 1, C).
    """

    def __init__(self, model: nn.Module, first_only: bool = False) -> None:
        super().__init__()
        enc = model.text_encoder
        emb = enc.embeddings
        self.word, self.position, self.ln_emb = (
            emb.word_embeddings,
            emb.position_embeddings,
            emb.LayerNorm,
        )
        self.layers = enc.encoder.layer
        self.n_head = enc.config.num_attention_heads
        self.first_only = first_only

    @staticmethod
    def _attend(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """softmax(q k^T / sqrt(D) + bias) v with heads merged: (B, H, T, D)... -> (B, T, C)."""
        s = (q @ k.transpose(2, 3)) / math.sqrt(q.shape[-1])  # (B, H, T, S)
        if bias is not None:
            s = s + bias
        a = torch.softmax(s, dim=-1) @ v  # (B, H, T, D)
        b, h, t, d = a.shape
        return a.transpose(1, 2).reshape(b, t, h * d)

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, image_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.n_head
        t = tokens.shape[1]
        # word + absolute position embeddings (positions 0 .. T - 1), then LayerNorm
        x = self.ln_emb(self.word(tokens) + self.position.weight[:t])  # (B, T, C)
        # transformers' additive padding mask: 0 where attended, the dtype's minimum elsewhere
        # (a key that is padding gets no weight; [CLS] is never padding, so no row is empty)
        bias = (1.0 - token_mask.to(x.dtype)) * torch.finfo(x.dtype).min  # (B, T)
        self_bias = bias[:, None, None, :]  # (B, 1, 1, T)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            k = split_heads(sa.key(x), h)  # (B, H, T, D)
            v = split_heads(sa.value(x), h)
            xq = x[:, :1] if self.first_only and i == last else x
            a = self._attend(split_heads(sa.query(xq), h), k, v, self_bias)
            xq = layer.attention.output(a, xq)  # LN(x + W_o a)
            ca = layer.crossattention
            k = split_heads(ca.self.key(image_features), h)  # (B, H, N, D)
            v = split_heads(ca.self.value(image_features), h)
            a = self._attend(split_heads(ca.self.query(xq), h), k, v, None)
            xq = ca.output(a, xq)
            x = layer.output(layer.intermediate(xq), xq)  # LN(x + W_2 act(W_1 x))
        return x, bias


class ITM(nn.Module):
    """(tokens, token_mask, image_features) -> (score, itm_logits): the text encoder
    (:class:`CrossTextEncoder`, its last layer for [CLS] alone: the head reads nothing else),
    then the ITM head on [CLS]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = CrossTextEncoder(model, first_only=True)
        self.head = model.itm_head

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, image_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.encoder(tokens, token_mask, image_features)  # (B, 1, C)
        logits: torch.Tensor = self.head(x[:, 0])  # (B, 2)
        score = torch.softmax(logits, dim=-1)[:, 1]  # (B,) P(match)
        return score, logits


def example_tokens(vocab: int, b: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) random ids and a mask with ragged lengths (row i padded by i % 3 tokens): a
    text encoder's example input."""
    gen = torch.Generator().manual_seed(b * 100 + t)
    tokens = torch.randint(0, vocab, (b, t), generator=gen)
    mask = torch.ones(b, t, dtype=torch.int64)
    for i in range(b):
        pad = min(i % 3, t - 1)
        if pad:
            mask[i, t - pad :] = 0
            tokens[i, t - pad :] = 0
    return tokens, mask


def image_spec(model: nn.Module, image_size: int) -> GraphSpec:
    """image_encoder.onnx: images (B, 3, S, S) -> image_features (B, N, C_vis), once per image
    (BLIP's ITM and VQA bundles alike); ModelDirError unless S is the vision model's side."""
    side = model.config.vision_config.image_size
    if image_size != side:
        # the vision model's position embeddings are for side x side images
        raise ModelDirError(
            f"preprocessor_config.json makes {image_size}x{image_size} images, the vision "
            f"model takes {side}x{side} (vision_config.image_size)"
        )

    def img_example(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, 3, image_size, image_size),)

    return GraphSpec(
        "image_encoder.onnx",
        ImageFeatures(model).eval(),
        ["images"],
        ["image_features"],
        {"images": {0: "batch"}},
        example=img_example,
        notes="the vision model's last hidden state ([CLS] + patches), once per image",
    )


def image_features_example(image: GraphSpec, b: int) -> torch.Tensor:
    """The image encoder's output on its example input at batch b (a text graph's input)."""
    with torch.no_grad():
        out: torch.Tensor = image.module(*image.example(b))
    return out


def specs(model: nn.Module, image_size: int) -> list[GraphSpec]:
    """image_encoder.onnx and itm.onnx (see the module docstring)."""
    image, itm = image_spec(model, image_size), ITM(model).eval()
    vocab = int(model.config.text_config.vocab_size)

    def itm_example(b: int) -> tuple[torch.Tensor, ...]:
        tokens, mask = example_tokens(vocab, b, 5 + 2 * b)  # another T at each batch size
        return tokens, mask, image_features_example(image, b)

    batch, text = {0: "batch"}, {0: "batch", 1: "tokens"}
    return [
        image,
        GraphSpec(
            "itm.onnx",
            itm,
            ["tokens", "token_mask", "image_features"],
            ["score", "itm_logits"],
            {"tokens": text, "token_mask": text, "image_features": batch},
            example=itm_example,
            notes="text encoder cross-attending to the image, ITM head on token 0; "
            "score = softmax(itm_logits)[:, 1]",
        ),
    ]


def score_bound(err32: float) -> float:
    """The bundle's allowed error in P(match) against the float64 reference, given the float32
    Hugging Face model's own error `err32` on the same pairs: twice PyTorch's float32 error
    (ONNX Runtime sums in other orders, the error is of the same kind), plus 64 float32 ulps
    of 1 (7.6e-6: a probability near 1, or a model whose float32 error happens to be tiny)."""
    return 2.0 * err32 + 64 * float(np.finfo(np.float32).eps)


def _long_text(tok: Any, max_len: int) -> str:
    """A text longer than max_len tokens (special tokens included)."""
    sentence = "a small red circle above a large blue square and"
    text = sentence
    while len(tok(text, verbose=False).input_ids) <= max_len:
        text = f"{text} {text}"
    return text


def _hf_scores(
    model: nn.Module, pixels: torch.Tensor, ids: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """P(match) and logits of one text (`ids`) against every image, by the model's forward."""
    n = len(pixels)
    input_ids = torch.tensor([ids] * n)
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            pixel_values=pixels.to(next(model.parameters()).dtype),
            attention_mask=torch.ones_like(input_ids),
            use_itm_head=True,
        ).itm_score
    logits64 = logits.double()
    return logits64.softmax(-1)[:, 1].numpy(), logits64.numpy()


def check_reference(
    bundle: Path,
    model: nn.Module,
    tok: Any,
    images: list[np.ndarray],
    pixels: torch.Tensor,
    max_len: int,
) -> dict[str, Any]:
    """The finished bundle (mmfast's runtime) against the Hugging Face model's forward; see
    the module docstring. `images` (uint8 (H, W, 3)) are the candidates, `pixels` the same
    images preprocessed (B, 3, S, S) for the model, `tok` the model's Hugging Face tokenizer.
    Raises a named ExportValidationError on any mismatch; returns the report."""
    from mmfast.reranker import Reranker

    rr = Reranker.load(bundle, threads=1)
    feats = rr.image_features(images)
    model64 = copy.deepcopy(model).double()
    texts = [*CHECK_TEXTS, _long_text(tok, max_len)]
    err32 = err = logit_err = 0.0
    rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
    for text in texts:
        want = tok(text, truncation=True, max_length=max_len).input_ids
        got = rr.encode(text)
        if got != want:
            raise TokenizationMismatchError(
                f"text {text[:40]!r}: the bundle's tokens {got[:12]}... differ from the "
                f"Hugging Face tokenizer's {want[:12]}..."
            )
        p32, _ = _hf_scores(model, pixels, want)
        p64, l64 = _hf_scores(model64, pixels, want)
        out = rr.run(
            "itm.onnx",
            {
                "tokens": np.array([want] * len(images), np.int64),
                "token_mask": np.ones((len(images), len(want)), np.int64),
                "image_features": feats,
            },
        )
        p = rr.score(text, feats)  # the runtime's own path: tokenizer.json, padding, chunks
        err32 = max(err32, float(np.abs(p32 - p64).max()))
        err = max(err, float(np.abs(p.astype(np.float64) - p64).max()))
        logit_err = max(logit_err, float(np.abs(out["itm_logits"] - l64).max()))
        rows.append((text, p, p32, p64))
    bound = score_bound(err32)
    if err > bound:
        raise OutputValueError(
            f"itm: P(match) differs from the float64 Hugging Face model by up to {err:.3g}, "
            f"more than {bound:.3g} (twice the float32 model's own {err32:.3g}, + 64 ulps)"
        )
    ties = 0
    for text, p, p32, p64 in rows:
        got_order, want_order = np.argsort(-p, kind="stable"), np.argsort(-p32, kind="stable")
        for a, b in zip(got_order, want_order, strict=True):
            # two images the float64 reference cannot tell apart at this precision may swap
            # (the ranking's contract; images further apart than 2 * bound cannot swap unless
            # a score is off by more than the bound, which the value check above refuses)
            if a != b and abs(p64[a] - p64[b]) > 2 * bound:
                raise RankingMismatchError(
                    f"text {text[:40]!r}: the bundle ranks the check images "
                    f"{got_order.tolist()}, the Hugging Face model {want_order.tolist()}"
                )
            ties += int(a != b)
    return {
        "images": len(images),
        "texts": len(texts),
        "longest_text_tokens": max(len(tok(t, verbose=False).input_ids) for t in texts),
        "max_len": max_len,
        "tokens_identical": True,
        "score_max_abs_err_vs_float64": err,
        "hf_float32_score_max_abs_err_vs_float64": err32,
        "score_bound": bound,
        "itm_logits_max_abs_err_vs_float64": logit_err,
        "ranking_identical": ties == 0,
        "ranking_swaps_within_bound": ties,
    }


def _max_len(model: nn.Module, tok: Any) -> int:
    """Text tokens the text encoder takes at most: its position table, or the tokenizer's
    model_max_length where smaller (what ``truncation=True`` cuts at)."""
    n = int(model.config.text_config.max_position_embeddings)
    limit = getattr(tok, "model_max_length", None)
    return min(n, int(limit)) if isinstance(limit, int) and limit > 0 else n


def text_tokenizer(
    d: ModelDir, tmp: Path, model: nn.Module
) -> tuple[Any, int, bool, dict[str, int], int]:
    """A BLIP text model's tokenizer, saved as tokenizer.json into `tmp`: (the Hugging Face
    tokenizer, its size, clean_up_tokenization_spaces, its special ids, the text tokens the
    text encoder takes at most). ModelDirError for one without a pad token (a batch's
    padding) or longer than the text model's vocabulary."""
    from transformers import AutoTokenizer

    vocab_size = int(model.config.text_config.vocab_size)
    n_tokens, cleanup, ids = save_tokenizer(d, tmp, vocab_size)
    tok = AutoTokenizer.from_pretrained(d.path, local_files_only=True)
    if tok.pad_token_id is None:
        raise ModelDirError(f"{d.path}: the tokenizer has no pad token (a batch's padding)")
    return tok, n_tokens, cleanup, ids, _max_len(model, tok)


def describe(d: ModelDir, model: nn.Module, arch: str) -> dict[str, Any]:
    """What a BLIP bundle's manifest config records of the model (ITM and VQA alike): the
    architecture, the sub-models' types, the image features' positions and width."""
    vis = model.config.vision_config
    return {
        "architecture": arch,
        "vision": d.config.get("vision_config", {}).get("model_type", VISION),
        "text": d.config.get("text_config", {}).get("model_type", TEXT),
        "image_positions": (vis.image_size // vis.patch_size) ** 2 + 1,  # [CLS] + patches
        "image_feature_dim": int(vis.hidden_size),
    }


def export_bundle(
    d: ModelDir, tmp: Path, *, arch: str, kind: str, check_images: int = 4
) -> dict[str, Any]:
    """Write the whole rerank bundle of the BLIP ITM directory `d` into the staging directory
    `tmp` (graphs, tokenizer.json, manifest.json), validated; returns the manifest.
    check_images: generated images for the reference check (at least MIN_RANK_IMAGES)."""
    preprocess = PreprocessConfig.from_hf(d.processor)
    model = load(d)
    vocab_size = int(model.config.text_config.vocab_size)
    tok, n_tokens, cleanup, ids, max_len = text_tokenizer(d, tmp, model)
    special = SpecialTokens(
        pad=int(tok.pad_token_id),
        # what the post-processor puts around a text ([CLS] ... [SEP]); recorded, not added
        bos=tok.cls_token_id if tok.cls_token_id is not None else ids["pad"],
        eos=tok.sep_token_id if tok.sep_token_id is not None else ids["pad"],
        unk=ids.get("unk", ids["pad"]),
    )
    graphs = specs(model, preprocess.size)
    report, sections = export_graphs(graphs, tmp)
    manifest: dict[str, Any] = {
        "task": "rerank",
        "kind": kind,
        "config": {
            **describe(d, model, arch),
            "text_vocab_size": vocab_size,
            "tokenizer_size": n_tokens,
            "score": "softmax(itm_logits)[:, 1]",
        },
        **common.bundle_sections(sections, preprocess, cleanup, special),
        "rerank": {"max_len": max_len},
        "validation": report,
        "provenance": provenance(d),
    }
    write_manifest(tmp, manifest)
    images = make_check_images(max(check_images, MIN_RANK_IMAGES), preprocess.size)
    pixels = torch.from_numpy(preprocess_batch(images, preprocess))
    report["hf_reference"] = check_reference(tmp, model, tok, images, pixels, max_len)
    manifest["validation"] = report
    write_manifest(tmp, manifest)
    return manifest
