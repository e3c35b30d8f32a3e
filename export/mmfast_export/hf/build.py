"""Hugging Face model directories built here, from configs (no model hub is reachable): a
VisionEncoderDecoder (ViT + GPT-2) with a byte-level BPE tokenizer trained on the shapes
captions, and a BLIP captioner (``BlipForConditionalGeneration``) with a BERT-style WordPiece
tokenizer, saved with ``save_pretrained`` exactly as a downloaded checkpoint would be.

Sizes: ``tiny`` (tests: built in about a second), ``small`` (fine-tuned by the demo),
``base`` (ViT-B/16 at 224 + GPT-2 124M, the benchmark's; BLIP base: ViT-B/16 at 384 + a
BERT-base text decoder; random weights).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "BLIP_SIZES",
    "SIZES",
    "build_blip",
    "build_blip_itm",
    "build_blip_vqa",
    "build_vit_gpt2",
    "shapes_captions",
    "train_tokenizer",
    "train_wordpiece",
]

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


def shapes_captions(n: int = 400) -> list[str]:
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
    tokens; a None value leaves the setting out)."""
    import torch
    import transformers as tf

    if size not in SIZES:
        raise ValueError(f"size: expected one of {', '.join(SIZES)}, got {size!r}")
    enc_kw, dec_kw, side = SIZES[size]
    tok = train_tokenizer(texts if texts is not None else shapes_captions())
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
    # a None setting leaves it out (transformers' default applies)
    settings = {k: v for k, v in {**gen, **(generation or {})}.items() if v is not None}
    model.generation_config = tf.GenerationConfig(**settings)
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


# ------------------------------------------------------------------------------------ BLIP

# BERT's special tokens, and the two BLIP adds: [DEC] starts the decoder (its bos), [ENC] marks
# the image-grounded text encoder's input
PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
DEC, ENC = "[DEC]", "[ENC]"
BERT_VOCAB = 30522  # bert-base-uncased's vocab.txt: [DEC] and [ENC] come after it

# BLIP's initialisation (std 0.02) leaves a tiny random model's captions the same for every
# image (the image's share of the post-LayerNorm residual stream is lost); std 0.1 lets the
# image through
_TINY_INIT = 0.1
# size -> (BlipVisionConfig, BlipTextConfig, BERT's id layout); vocab_size: the tokenizer's
BLIP_SIZES: dict[str, tuple[dict[str, Any], dict[str, Any], bool]] = {
    "tiny": (
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 32,
            "patch_size": 8,
            "initializer_range": _TINY_INIT,
        },
        {
            "hidden_size": 48,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            "initializer_range": _TINY_INIT,
        },
        False,
    ),
    "base": (  # Salesforce/blip-image-captioning-base's shapes
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "image_size": 384,
            "patch_size": 16,
        },
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "max_position_embeddings": 512,
        },
        True,
    ),
}


def train_wordpiece(
    texts: Iterable[str], vocab_size: int = 400, *, bert_layout: bool = False
) -> Any:
    """A BERT-style (uncased WordPiece) tokenizer learnt from `texts`, as BLIP's: [PAD] = 0,
    [UNK], [CLS], [SEP], [MASK], the learnt pieces, then the added [DEC] (bos) and [ENC];
    "[CLS] text [SEP]" for one text. bert_layout: bert-base-uncased's ids ([UNK] = 100,
    [CLS] = 101, [SEP] = 102, [MASK] = 103, [unusedN] fillers up to 30522), so [DEC] = 30522
    and [ENC] = 30523 as in BLIP's checkpoints. transformers' BertTokenizerFast."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertTokenizerFast

    specials = [PAD, UNK, CLS, SEP, MASK]

    def pipeline(tok: Any) -> Any:
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        return tok

    learner = pipeline(Tokenizer(models.WordPiece(unk_token=UNK)))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False
    )
    learner.train_from_iterator(list(texts), trainer)
    learnt = sorted(learner.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
    pieces = [t for t, _ in learnt if t not in specials]
    if bert_layout:
        tokens = [PAD, *(f"[unused{i}]" for i in range(99)), UNK, CLS, SEP, MASK, *pieces]
        if len(tokens) > BERT_VOCAB:
            raise ValueError(f"vocab_size: {len(tokens)} tokens do not fit BERT's {BERT_VOCAB}")
        tokens += [f"[unused{i}]" for i in range(99, 99 + BERT_VOCAB - len(tokens))]
    else:
        tokens = [*specials, *pieces]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = pipeline(Tokenizer(models.WordPiece(vocab, unk_token=UNK)))
    tok.add_special_tokens(specials)  # already in the vocabulary: they keep their ids
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
    )
    return BertTokenizerFast(
        tokenizer_object=tok,
        unk_token=UNK,
        sep_token=SEP,
        pad_token=PAD,
        cls_token=CLS,
        mask_token=MASK,
        bos_token=DEC,
        additional_special_tokens=[ENC],
        do_lower_case=True,
    )


def build_blip(
    out: str | Path, size: str = "tiny", *, seed: int = 0, texts: Iterable[str] | None = None
) -> Path:
    """Write a BLIP captioning model directory (``BlipForConditionalGeneration``) with random
    weights; returns `out`. texts: the tokenizer's training text (default: shapes captions).

    As BLIP's checkpoints: text_config's bos is [DEC], sep [SEP], pad [PAD] and eos 2 (BLIP's
    value, which its generate() does not use); a BlipImageProcessor at the vision model's side
    (bicubic, CLIP's mean and std). The text decoder's output layer is tied to its word
    embeddings; base has BLIP's 30524 rows (tiny: the tokenizer's)."""
    import transformers as tf

    return _build_blip(out, size, seed, texts, tf.BlipForConditionalGeneration, None)


def build_blip_itm(
    out: str | Path, size: str = "tiny", *, seed: int = 0, texts: Iterable[str] | None = None
) -> Path:
    """Write a BLIP image-text matching directory (``BlipForImageTextRetrieval``: a ViT
    vision model, a BERT-style text encoder with cross-attention to the image, and the ITM
    head, Salesforce/blip-itm-base-coco's layout) with random weights; returns `out`.

    The sizes of :data:`BLIP_SIZES` (base: ViT-B/16 at 384 + BERT-base), the same tokenizer
    and image processor as :func:`build_blip`; the tokenizer's model_max_length is the text
    encoder's position table (as the checkpoints' 512), so ``truncation=True`` cuts there."""
    import transformers as tf

    size_kw = BLIP_SIZES[size][1] if size in BLIP_SIZES else {}
    max_length = size_kw.get("max_position_embeddings")
    return _build_blip(out, size, seed, texts, tf.BlipForImageTextRetrieval, max_length)


def build_blip_vqa(
    out: str | Path, size: str = "tiny", *, seed: int = 0, texts: Iterable[str] | None = None
) -> Path:
    """Write a BLIP VQA directory (``BlipForQuestionAnswering``: a ViT vision model, a
    BERT-style question encoder cross-attending to the image, and an answer decoder
    cross-attending to the question, Salesforce/blip-vqa-base's layout) with random weights;
    returns `out`.

    The sizes of :data:`BLIP_SIZES` (base: ViT-B/16 at 384 + BERT-base encoder and decoder),
    the same tokenizer and image processor as :func:`build_blip`, model_max_length the text
    position table (as :func:`build_blip_itm`). The answer decoder's cross-attention takes the
    question encoder's states through ``text_config.encoder_hidden_size`` (the vision width),
    so the two widths must be equal: tiny's vision model is made as wide as its text model."""
    import transformers as tf

    size_kw = BLIP_SIZES[size][1] if size in BLIP_SIZES else {}
    max_length = size_kw.get("max_position_embeddings")
    vision = {"hidden_size": size_kw["hidden_size"]} if size_kw else None
    return _build_blip(
        out, size, seed, texts, tf.BlipForQuestionAnswering, max_length, vision=vision
    )


def _build_blip(
    out: str | Path,
    size: str,
    seed: int,
    texts: Iterable[str] | None,
    model_cls: Any,
    max_length: int | None,
    *,
    vision: dict[str, Any] | None = None,
) -> Path:
    """build_blip, build_blip_itm and build_blip_vqa: one BLIP config, tokenizer and image
    processor, the model class theirs; max_length: the tokenizer's model_max_length (None: its
    default); vision: BlipVisionConfig fields replacing the size's."""
    import torch
    import transformers as tf

    if size not in BLIP_SIZES:
        raise ValueError(f"size: expected one of {', '.join(BLIP_SIZES)}, got {size!r}")
    vis_kw, text_kw, bert_layout = BLIP_SIZES[size]
    vis_kw = {**vis_kw, **(vision or {})}
    tok = train_wordpiece(
        texts if texts is not None else shapes_captions(), bert_layout=bert_layout
    )
    if max_length is not None:
        tok.model_max_length = max_length
    ids = {t: tok.convert_tokens_to_ids(t) for t in (PAD, SEP, DEC)}
    cfg = tf.BlipConfig(
        vision_config=vis_kw,
        text_config={
            **text_kw,
            "vocab_size": len(tok),
            "encoder_hidden_size": vis_kw["hidden_size"],
            "bos_token_id": ids[DEC],
            "sep_token_id": ids[SEP],
            "pad_token_id": ids[PAD],
            "eos_token_id": 2,
        },
    )
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    side = vis_kw["image_size"]
    tf.BlipImageProcessor(size={"height": side, "width": side}).save_pretrained(out)
    return out
