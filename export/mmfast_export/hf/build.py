"""Hugging Face model directories built here, from configs (no model hub is reachable): a
VisionEncoderDecoder (ViT + GPT-2) with a byte-level BPE tokenizer trained on the shapes
captions, saved with ``save_pretrained`` exactly as a downloaded checkpoint would be.

Sizes: ``tiny`` (tests: built in about a second), ``small`` (fine-tuned by the demo),
``base`` (ViT-B/16 at 224 + GPT-2 124M, the benchmark's; random weights).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["SIZES", "build_vit_gpt2", "train_tokenizer"]

EOT = "<|endoftext|>"  # GPT-2's one special token: start, end and padding

# size -> (ViT config, GPT-2 config, image side); vocab_size None: the tokenizer's
SIZES: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "tiny": (
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "patch_size": 8,
        },
        {"n_embd": 48, "n_layer": 2, "n_head": 2, "n_positions": 64, "vocab_size": None},
        32,
    ),
    "small": (
        {
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "patch_size": 8,
        },
        {"n_embd": 128, "n_layer": 3, "n_head": 4, "n_positions": 64, "vocab_size": None},
        64,
    ),
    "base": (
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "patch_size": 16,
        },
        {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
        224,
    ),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> Any:
    """A GPT-2-style byte-level BPE tokenizer (transformers' PreTrainedTokenizerFast) learnt
    from `texts`, with <|endoftext|> as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, unk_token=EOT
    )


def _shapes_captions(n: int = 400) -> list[str]:
    from ..shapes import ShapesConfig, captions, sample_scene

    cfg = ShapesConfig(size=64)
    return [c for i in range(n) for c in captions(sample_scene(cfg, i), cfg.size)]


def build_vit_gpt2(
    out: str | Path,
    size: str = "tiny",
    *,
    seed: int = 0,
    texts: Iterable[str] | None = None,
    generation: dict[str, Any] | None = None,
    encoder: str = "vit",
) -> Path:
    """Write a VisionEncoderDecoder (ViT or DeiT encoder + GPT-2 decoder) model directory with
    random weights; returns `out`. texts: the tokenizer's training text (default: shapes
    captions). generation: generation_config.json settings over the defaults (greedy, 20 new
    tokens)."""
    import torch
    import transformers as tf

    if size not in SIZES:
        raise ValueError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    enc_kw, dec_kw, side = SIZES[size]
    tok = train_tokenizer(texts if texts is not None else _shapes_captions())
    eot = tok.convert_tokens_to_ids(EOT)
    dec_kw = {**dec_kw, "vocab_size": dec_kw["vocab_size"] or len(tok)}
    enc_cls = {"vit": tf.ViTConfig, "deit": tf.DeiTConfig}[encoder]
    cfg = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        enc_cls(image_size=side, **enc_kw),
        tf.GPT2Config(
            add_cross_attention=True, is_decoder=True, bos_token_id=eot, eos_token_id=eot, **dec_kw
        ),
    )
    cfg.decoder_start_token_id = cfg.pad_token_id = cfg.eos_token_id = eot
    torch.manual_seed(seed)
    model = tf.VisionEncoderDecoderModel(cfg).eval()
    gen = {
        "decoder_start_token_id": eot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": 21,
        "num_beams": 1,
    }
    model.generation_config = tf.GenerationConfig(**{**gen, **(generation or {})})
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    processor = {"vit": tf.ViTImageProcessor, "deit": tf.DeiTImageProcessor}[encoder]
    kw = {"size": {"height": side, "width": side}}
    if encoder == "deit":  # resize larger, then crop to the model's side
        kw = {
            "size": {"height": side + side // 7, "width": side + side // 7},
            "crop_size": {"height": side, "width": side},
        }
    processor(**kw).save_pretrained(out)
    return out
