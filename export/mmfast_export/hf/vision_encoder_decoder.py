"""Adapter: Hugging Face ``VisionEncoderDecoderModel`` (a ViT or DeiT encoder; a GPT-2 decoder,
:mod:`.gpt2`, or a BERT-style one, ``BertLMHeadModel``, :mod:`.bert`, with cross-attention) ->
a caption bundle's two graphs (:mod:`.graphs`).

- ``encoder.onnx``: images (B, 3, S, S) -> the decoder's whole initial state: every layer's
  cross-attention keys and values, computed once per image (Optimum's export recomputes them
  at every step), and every layer's self-attention cache, empty (B, H, 0, D).
- ``decoder_step.onnx``: the previous token (B,) and the state -> logits (B, V), attention
  (B, N) and the self-attention cache one token longer.

The encoder's states pass through ``enc_to_dec_proj`` when the two hidden sizes differ (as
the model's own forward does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..onnx_export import GraphSpec
from . import common
from .bert import BertCrossKV, BertStep, check_bert_decoder
from .gpt2 import GPT2CrossKV, GPT2Step, check_gpt2_decoder
from .graphs import cache_graphs
from .model_dir import ModelDir

__all__ = [
    "ENCODERS",
    "ID_CONFIGS",
    "VEDEncoder",
    "describe",
    "load",
    "max_new_tokens",
    "reference_logits",
    "specs",
    "vocab_size",
]

ENCODERS = ("vit", "deit")
# decoder model_type -> (config check, cross K/V module, step module)
DECODERS: dict[str, tuple[Any, type[nn.Module], type[nn.Module]]] = {
    "gpt2": (check_gpt2_decoder, GPT2CrossKV, GPT2Step),
    "bert": (check_bert_decoder, BertCrossKV, BertStep),  # BertLMHeadModel, cross-attention
}


def load(d: ModelDir) -> nn.Module:
    """The model of a VisionEncoderDecoder directory, checked to be one this adapter cuts."""
    from transformers import VisionEncoderDecoderModel

    enc = d.config.get("encoder", {}).get("model_type")
    dec = d.config.get("decoder", {}).get("model_type")
    if enc not in ENCODERS:
        raise ValueError(
            f"{d.path}: encoder model_type {enc!r} is not supported (supported: "
            f"{', '.join(ENCODERS)})"
        )
    if dec not in DECODERS:
        raise ValueError(
            f"{d.path}: decoder model_type {dec!r} is not supported (supported: "
            f"{', '.join(DECODERS)})"
        )
    model = common.from_pretrained(d, VisionEncoderDecoderModel)
    DECODERS[dec][0](model.decoder)
    return model.eval()


class VEDEncoder(nn.Module):
    """images -> (empty self-attention caches..., cross-attention K/V...), see the docstring."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        enc_cfg, dec_cfg = model.encoder.config, model.decoder.config
        needs_proj = enc_cfg.hidden_size != dec_cfg.hidden_size and (
            getattr(dec_cfg, "cross_attention_hidden_size", None) is None
        )
        self.proj = model.enc_to_dec_proj if needs_proj else None
        self.cross = DECODERS[dec_cfg.model_type][1](model.decoder)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        enc = self.encoder(pixel_values=images).last_hidden_state  # (B, N, C_enc)
        if self.proj is not None:
            enc = self.proj(enc)
        cross = self.cross(enc)
        empty = [kv[:, :, :0] for kv in cross]  # (B, H, 0, D): no token decoded yet
        return (*empty, *cross)


def specs(model: nn.Module, image_size: int) -> tuple[list[GraphSpec], dict[str, str]]:
    """The two graphs, and the step's state updates (past_* -> present_*)."""
    dec = model.decoder.config
    step = DECODERS[dec.model_type][2](model.decoder)
    return cache_graphs(VEDEncoder(model), step, dec.num_hidden_layers, dec.vocab_size, image_size)


# sub-configs of config.json where generate() finds token ids generation_config.json lacks
ID_CONFIGS = ("decoder",)


def vocab_size(model: nn.Module) -> int:
    """Rows of the decoder's output layer (the logits)."""
    return int(model.decoder.config.vocab_size)


def describe(d: ModelDir) -> dict[str, Any]:
    """What the manifest's config records of the model."""
    return {
        "encoder": d.config.get("encoder", {}).get("model_type"),
        "decoder": d.config.get("decoder", {}).get("model_type"),
    }


def max_new_tokens(model: nn.Module) -> int:
    """Tokens the decoder can generate after its start token (its position embeddings)."""
    return int(model.decoder.config.max_position_embeddings)


@torch.no_grad()
def reference_logits(model: nn.Module, images: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """The Hugging Face model's logits (B, T, V) for decoder input `prefix` (B, T)."""
    return model(pixel_values=images, decoder_input_ids=prefix).logits
