"""CLIP model directories built here from configs (no model hub is reachable): a ``CLIPModel``
with a CLIP-style tokenizer trained on the shapes captions, saved with ``save_pretrained``
exactly as a downloaded checkpoint would be (config.json, model.safetensors, tokenizer.json +
tokenizer_config.json, preprocessor_config.json with CLIP's shortest-edge resize + center crop).

Sizes: ``tiny`` (tests: about a second), ``small`` (the demo's), ``base`` (ViT-B/32 at 224 +
CLIP's 12-layer 512-wide text Transformer, the benchmark's; random weights).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .build import shapes_captions

__all__ = [
    "CLIP_SIZES",
    "SIGLIP_SIZES",
    "build_clip",
    "build_siglip",
    "train_clip_tokenizer",
    "train_siglip_tokenizer",
]

SOT, EOT = "<|startoftext|>", "<|endoftext|>"  # CLIP's bos and eos (eos also pads)
# CLIP's pre-tokenizer: contractions, letter runs, single digits, other non-space runs
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+"""
)

# size -> (CLIPVisionConfig, CLIPTextConfig, projection_dim); vocab_size: the tokenizer's
CLIP_SIZES: dict[str, tuple[dict[str, Any], dict[str, Any], int]] = {
    "tiny": (
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
        },
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 32,
        },
        16,
    ),
    "small": (
        {
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "image_size": 64,
            "patch_size": 8,
        },
        {
            "hidden_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "max_position_embeddings": 32,
        },
        128,
    ),
    "base": (  # openai/clip-vit-base-patch32's shapes
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "image_size": 224,
            "patch_size": 32,
        },
        {
            "hidden_size": 512,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "intermediate_size": 2048,
            "max_position_embeddings": 77,
        },
        512,
    ),
}


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int = 500) -> Any:
    """A tokenizer built the way transformers converts CLIP's (lower-cased, whitespace
    collapsed, byte-level BPE with a ``</w>`` end-of-word suffix, <|startoftext|> ...
    <|endoftext|> around every text), learnt from `texts`; a CLIPTokenizerFast."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import CLIPTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=EOT, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SOT, EOT],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    # as in CLIP's vocabulary, every byte also as a word's last symbol ("x</w>"): no text
    # maps to the unknown token, whatever characters it holds
    learnt = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(learnt["vocab"])
    for c in alphabet:
        vocab.setdefault(c + "</w>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok.model = models.BPE(vocab, merges, unk_token=EOT, end_of_word_suffix="</w>")
    sot, eot = tok.token_to_id(SOT), tok.token_to_id(EOT)
    tok.post_processor = processors.RobertaProcessing(
        (EOT, eot), (SOT, sot), add_prefix_space=False, trim_offsets=False
    )
    return CLIPTokenizerFast(
        tokenizer_object=tok, bos_token=SOT, eos_token=EOT, pad_token=EOT, unk_token=EOT
    )


def build_clip(
    out: str | Path,
    size: str = "tiny",
    *,
    seed: int = 0,
    texts: Iterable[str] | None = None,
) -> Path:
    """Write a CLIPModel directory with random weights; returns `out`. texts: the tokenizer's
    training text (default: shapes captions)."""
    import torch
    import transformers as tf

    if size not in CLIP_SIZES:
        raise ValueError(f"size: expected one of {', '.join(CLIP_SIZES)}, got {size!r}")
    vis_kw, txt_kw, proj = CLIP_SIZES[size]
    tok = train_clip_tokenizer(texts if texts is not None else shapes_captions())
    sot, eot = tok.convert_tokens_to_ids(SOT), tok.convert_tokens_to_ids(EOT)
    text_cfg = tf.CLIPTextConfig(
        vocab_size=len(tok),
        bos_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        **txt_kw,
    )
    cfg = tf.CLIPConfig(
        text_config=text_cfg.to_dict(),
        vision_config=tf.CLIPVisionConfig(**vis_kw).to_dict(),
        projection_dim=proj,
    )
    torch.manual_seed(seed)
    model = tf.CLIPModel(cfg).eval()
    out = Path(out)
    model.save_pretrained(out)
    tok.model_max_length = txt_kw["max_position_embeddings"]
    tok.save_pretrained(out)
    side = vis_kw["image_size"]
    tf.CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    ).save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------- SigLIP

# size -> (SiglipVisionConfig, SiglipTextConfig); the text tower pools its last position, so
# texts are padded to max_position_embeddings (SigLIP's processor: padding="max_length")
SIGLIP_SIZES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
        },
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 16,
        },
    ),
    "base": (  # google/siglip-base-patch16-224's shapes
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "image_size": 224,
            "patch_size": 16,
        },
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 64,
        },
    ),
}
PAD_EOS, UNK = "</s>", "<unk>"  # SigLIP's: </s> ends every text and pads it


def train_siglip_tokenizer(texts: Iterable[str], vocab_size: int = 400) -> Any:
    """A SentencePiece-style (Metaspace, Unigram) tokenizer ending every text with </s>, as
    SigLIP's, learnt from `texts`; a PreTrainedTokenizerFast (SigLIP's own tokenizer class is
    SentencePiece's, which needs the sentencepiece package this project does not use)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=[UNK, PAD_EOS], unk_token=UNK, show_progress=False
    )
    tok.train_from_iterator(list(texts), trainer)
    eos = tok.token_to_id(PAD_EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {PAD_EOS}", special_tokens=[(PAD_EOS, eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=PAD_EOS, pad_token=PAD_EOS, unk_token=UNK
    )


def build_siglip(
    out: str | Path, size: str = "tiny", *, seed: int = 0, texts: Iterable[str] | None = None
) -> Path:
    """Write a SiglipModel directory with random weights; returns `out`."""
    import torch
    import transformers as tf

    if size not in SIGLIP_SIZES:
        raise ValueError(f"size: expected one of {', '.join(SIGLIP_SIZES)}, got {size!r}")
    vis_kw, txt_kw = SIGLIP_SIZES[size]
    tok = train_siglip_tokenizer(texts if texts is not None else shapes_captions())
    pad = tok.convert_tokens_to_ids(PAD_EOS)
    cfg = tf.SiglipConfig(
        text_config={
            "vocab_size": len(tok),
            "pad_token_id": pad,
            "bos_token_id": pad,
            "eos_token_id": pad,
            **txt_kw,
        },
        vision_config=vis_kw,
    )
    torch.manual_seed(seed)
    model = tf.SiglipModel(cfg).eval()
    with torch.no_grad():  # the paper's initial temperature and bias (HF's init leaves 1, 0)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    out = Path(out)
    model.save_pretrained(out)
    tok.model_max_length = txt_kw["max_position_embeddings"]
    tok.save_pretrained(out)
    side = vis_kw["image_size"]
    tf.SiglipImageProcessor(size={"height": side, "width": side}).save_pretrained(out)
    return out
