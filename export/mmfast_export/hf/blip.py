"""Adapter: Hugging Face ``BlipForConditionalGeneration`` (BLIP captioning: a ViT vision model,
a BERT-style text decoder with cross-attention) -> a caption bundle's two graphs.

- ``encoder.onnx``: images (B, 3, S, S) -> the decoder's whole initial state: every layer's
  cross-attention keys and values over the vision model's ``last_hidden_state`` (the [CLS]
  position and every patch, after ``post_layernorm``; (B, 1 + P, C_vis)), computed once per
  image, and every layer's self-attention cache, empty (B, H, 0, D).
- ``decoder_step.onnx``: the previous token (B,) and the state -> logits (B, V), attention
  (B, 1 + P) and the self-attention cache one token longer (:mod:`.bert`).

What ``BlipForConditionalGeneration.generate(pixel_values, **kw)`` does (transformers 4.57 and
5.x alike), and so what the bundle records:
- the image attention mask is all ones (every position attended: no mask in the graphs);
- without ``input_ids`` the decoder input is ``[[bos, eos]]`` per image; the first id is then
  set to ``text_config.bos_token_id`` (BLIP's [DEC]) and the last one dropped (a processor's
  trailing [SEP]), so unconditional captioning starts from [DEC] alone;
- it calls ``text_decoder.generate(..., eos_token_id=text_config.sep_token_id,
  pad_token_id=text_config.pad_token_id, **kw)``: decoding stops at [SEP] (not at
  ``text_config.eos_token_id``), and runs with the *text decoder's* generation config (made
  from ``text_config``); the model directory's ``generation_config.json`` is not read by it,
  so it is not read here either (:func:`generation_settings`).

A text prompt (``generate(pixel_values, input_ids=processor(text="a picture of").input_ids)``:
[DEC] + the prompt's tokens, the caption continuing them) is not exported: the bundle captions
unconditionally, as ``generate(pixel_values)`` does, and the manifest says so
(``config.text_prompt`` is null).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..onnx_export import GraphSpec
from . import common
from .bert import BertCrossKV, BertStep, check_bert_decoder
from .graphs import cache_graphs
from .model_dir import ModelDir, ModelDirError

__all__ = [
    "ID_CONFIGS",
    "BlipEncoder",
    "describe",
    "generation_settings",
    "load",
    "max_new_tokens",
    "reference_logits",
    "specs",
    "vocab_size",
]

VISION, TEXT = "blip_vision_model", "blip_text_model"


def load(d: ModelDir) -> nn.Module:
    """The model of a BLIP captioning directory, checked to be one this adapter cuts."""
    from transformers import BlipForConditionalGeneration

    common.check_sub_configs(d, {"vision_config": VISION, "text_config": TEXT})
    model = common.from_pretrained(d, BlipForConditionalGeneration)
    check_bert_decoder(model.text_decoder)
    if model.config.text_config.sep_token_id is None:
        raise ModelDirError(
            f"{d.path}: config.json's text_config has no sep_token_id (BLIP's generate stops "
            "decoding at it)"
        )
    return model.eval()


class BlipEncoder(nn.Module):
    """images -> (empty self-attention caches..., cross-attention K/V...), see the docstring."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision = model.vision_model
        self.cross = BertCrossKV(model.text_decoder)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # what generate() hands the decoder: [CLS] + patches, after post_layernorm
        enc = self.vision(pixel_values=images).last_hidden_state  # (B, 1 + P, C_vis)
        cross = self.cross(enc)
        empty = [kv[:, :, :0] for kv in cross]  # (B, H, 0, D): no token decoded yet
        return (*empty, *cross)


def specs(model: nn.Module, image_size: int) -> tuple[list[GraphSpec], dict[str, str]]:
    """The two graphs, and the step's state updates (past_* -> present_*)."""
    side = model.config.vision_config.image_size
    if image_size != side:
        # the vision model's position embeddings are for side x side images (generate() does
        # not interpolate them unless asked)
        raise ModelDirError(
            f"preprocessor_config.json makes {image_size}x{image_size} images, the vision "
            f"model takes {side}x{side} (vision_config.image_size)"
        )
    text = model.config.text_config
    return cache_graphs(
        BlipEncoder(model),
        BertStep(model.text_decoder),
        text.num_hidden_layers,
        text.vocab_size,
        image_size,
    )


# sub-configs of config.json holding token ids (generation_settings reads them itself)
ID_CONFIGS = ("text_config",)


def generation_settings(d: ModelDir, model: nn.Module) -> dict[str, Any]:
    """The generation settings ``model.generate(pixel_values)`` runs with: the text decoder's
    generation config, started at text_config's bos ([DEC]), ended at its sep ([SEP]), padded
    with its pad, as ``BlipForConditionalGeneration.generate`` passes them."""
    text = model.config.text_config
    gen = dict(model.text_decoder.generation_config.to_diff_dict())
    gen["decoder_start_token_id"] = gen["bos_token_id"] = text.bos_token_id
    gen["eos_token_id"] = text.sep_token_id
    if text.pad_token_id is not None:  # None: generate() keeps the generation config's
        gen["pad_token_id"] = text.pad_token_id
    return gen


def vocab_size(model: nn.Module) -> int:
    """Rows of the text decoder's output layer (the logits)."""
    return int(model.config.text_config.vocab_size)


def describe(d: ModelDir) -> dict[str, Any]:
    """What the manifest's config records of the model."""
    return {
        "encoder": d.config.get("vision_config", {}).get("model_type", VISION),
        "decoder": d.config.get("text_config", {}).get("model_type", TEXT),
        "text_prompt": None,  # unconditional captioning: generate(pixel_values) (see above)
    }


def max_new_tokens(model: nn.Module) -> int:
    """Tokens the decoder can generate after [DEC] (its position embeddings)."""
    return int(model.config.text_config.max_position_embeddings)


@torch.no_grad()
def reference_logits(model: nn.Module, images: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """The Hugging Face model's logits (B, T, V) for decoder input `prefix` (B, T)."""
    return model(pixel_values=images, input_ids=prefix).logits
