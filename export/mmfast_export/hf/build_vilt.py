"""ViLT question-answering directories built here from configs (no model hub is reachable):
``ViltForQuestionAnswering`` with random weights, a BERT-style WordPiece tokenizer trained on
the shapes questions, a ViltImageProcessor and ``id2label`` = the shapes answers, saved with
``save_pretrained`` exactly as a downloaded checkpoint (dandelin/vilt-b32-finetuned-vqa) is.

Sizes: ``tiny`` (tests: built in about a second; 64-pixel shorter side, 16-pixel patches),
``base`` (ViLT-B/32: BERT-base shapes, 384-pixel shorter side, 32-pixel patches, 40 text
positions, bert-base-uncased's token ids; the benchmark's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .build import train_wordpiece

__all__ = ["VILT_SIZES", "build_vilt", "shapes_questions"]

# size -> (ViltConfig keywords, BERT's id layout); the processor's shorter side is image_size
# and its size_divisor the patch size, as in dandelin's checkpoints (384, 32)
VILT_SIZES: dict[str, tuple[dict[str, Any], bool]] = {
    "tiny": (
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "image_size": 64,
            "patch_size": 16,
            "max_position_embeddings": 40,
            # std 0.1 (not 0.02): lets a random tiny model's answer depend on the image
            "initializer_range": 0.1,
        },
        False,
    ),
    "base": (
        {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "image_size": 384,
            "patch_size": 32,
            "max_position_embeddings": 40,
        },
        True,
    ),
}


def shapes_questions(n_images: int = 200) -> tuple[list[str], list[str]]:
    """(questions, distinct answers in first-seen order) of the first n_images shapes scenes."""
    from ..shapes import ShapesConfig, questions, sample_scene

    cfg = ShapesConfig()
    qs: list[str] = []
    answers: dict[str, None] = {}
    for i in range(n_images):
        for q in questions(sample_scene(cfg, i), cfg):
            qs.append(q["question"])
            answers.setdefault(q["answer"])
    return qs, list(answers)


def build_vilt(
    out: str | Path,
    size: str = "tiny",
    *,
    seed: int = 0,
    texts: Iterable[str] | None = None,
    answers: Sequence[str] | None = None,
) -> Path:
    """Write a ``ViltForQuestionAnswering`` directory with random weights; returns `out`.
    texts: the tokenizer's training text, answers: the labels (default: the shapes questions
    and answers). The tokenizer's model_max_length is the text position table (40), so
    ``truncation=True`` cuts there."""
    import torch
    import transformers as tf

    if size not in VILT_SIZES:
        raise ValueError(f"size: expected one of {', '.join(VILT_SIZES)}, got {size!r}")
    model_kw, bert_layout = VILT_SIZES[size]
    default_texts, default_answers = shapes_questions()
    labels = list(answers) if answers is not None else default_answers
    if not labels or len(set(labels)) != len(labels):
        raise ValueError("answers: expected distinct answer strings, at least one")
    tok = train_wordpiece(texts if texts is not None else default_texts, bert_layout=bert_layout)
    tok.model_max_length = model_kw["max_position_embeddings"]
    cfg = tf.ViltConfig(
        **model_kw,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        id2label=dict(enumerate(labels)),
        label2id={a: i for i, a in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = tf.ViltForQuestionAnswering(cfg).eval()
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    side, patch = model_kw["image_size"], model_kw["patch_size"]
    processor = getattr(tf, "ViltImageProcessorPil", None) or tf.ViltImageProcessor
    processor(size={"shortest_edge": side}, size_divisor=patch).save_pretrained(out)
    return out
