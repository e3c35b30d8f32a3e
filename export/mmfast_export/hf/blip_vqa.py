"""Adapter: Hugging Face ``BlipForQuestionAnswering`` (BLIP VQA: a ViT vision model, a BERT-style
question encoder cross-attending to the image, and an answer decoder cross-attending to the
question) -> a generative ``vqa`` bundle (:mod:`mmfast.vqa_generative`).

What ``model.generate(input_ids, pixel_values, attention_mask, **kw)`` computes (transformers
5.x), and so what the three graphs compute:

- ``image_embeds = vision_model(pixel_values).last_hidden_state``: [CLS] + every patch, after
  ``post_layernorm``, (B, N = 1 + P, C_vis); every image position attended;
- ``question_embeds = text_encoder(input_ids, attention_mask, encoder_hidden_states=
  image_embeds)``: the text model run bidirectionally (padding mask only), each layer's
  cross-attention over the image; ``input_ids`` as given ("[CLS] question [SEP]" from
  BlipProcessor's BERT tokenizer: neither transformers 4.57 nor 5.x swaps [CLS] for [ENC] as
  the original BLIP code does), so the bundle's tokenizer.json gives the same ids;
- ``text_decoder.generate(input_ids=[[bos]], eos_token_id=sep, pad_token_id=pad,
  encoder_hidden_states=question_embeds, encoder_attention_mask=ones, **kw)``: the answer is
  decoded from [DEC] (``text_config.bos_token_id``) to [SEP], with the text decoder's own
  generation config (as BLIP captioning: :func:`.blip.generation_settings`).

The padding of a batch. ``generate`` hands the answer decoder a mask of *ones* over the
question states, and in transformers 5.24 the decoder's cross-attention ignores any mask
anyway (``BlipTextSelfAttention`` reads it from an ``encoder_attention_mask`` argument that
``BlipTextAttention`` never passes), ``forward`` included: in a batch of questions of different
lengths, a short question's decoder also attends to the question encoder's states at its
padding, so its answer depends on the batch it came in (a tiny random model gives one answer
alone and another padded). The original BLIP masks the padding. The bundle carries the mask
as state (``question_bias``, (B, T) additive: 0 attended, float32's minimum not), made by
``question_encoder.onnx`` from the token mask, so mmfast's runtime answers each question as
``generate`` answers it *alone* (unpadded), whatever the batch; the runtime's
``attend_padding=True`` zeroes the bias and reproduces ``generate`` on a padded batch instead.
The export validates both.

Graphs (state names of :mod:`.graphs`; L text layers, H heads, D = C / H):

- ``image_encoder.onnx``: ``images`` (B_img, 3, S, S) -> ``image_features`` (B_img, N, C_vis),
  once per image;
- ``question_encoder.onnx``: ``tokens`` (B, T) int64, ``token_mask`` (B, T) int64 (1 = token,
  0 = padding), ``image_features`` (B, N, C_vis) (the question's image's) -> the answer
  decoder's whole initial state: ``past_key_i`` / ``past_value_i`` (B, H, 0, D) empty,
  ``cross_key_i`` / ``cross_value_i`` (B, H, T, D) over the question states, ``question_bias``
  (B, T) float32;
- ``decoder_step.onnx``: ``tokens`` (B,) + that state -> ``logits`` (B, V), ``attention``
  (B, T) (the last layer's cross-attention over the question, averaged over heads) and
  ``present_key_i`` / ``present_value_i`` (B, H, t + 1, D) (:class:`.bert.BertStep`).

Validation (the manifest's ``validation``): each graph, ONNX Runtime against PyTorch; the
exported modules stepped token by token against the Hugging Face text decoder's logits
(``reference``); then ``hf_generate``: the finished bundle run by mmfast's runtime on
generated images and questions of different lengths in one batch (one longer than ``max_len``,
cut as ``truncation=True``): the token ids must be the Hugging Face tokenizer's, and the
answers token-identical to ``model.generate`` greedy and with 3 beams, question by question
(and, with ``attend_padding``, to ``generate`` on the padded batch).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmfast.bundle import write_manifest
from mmfast.generation import GenerationConfig, cut_at_eos
from mmfast.preprocess import PreprocessConfig, preprocess_batch
from mmfast.tokenizer import SpecialTokens

from ..onnx_export import ExportValidationError, GraphSpec, OutputValueError, export_graphs
from . import blip, blip_itm, common
from .bert import BertCrossKV, BertStep, check_bert_decoder
from .blip_itm import (
    CrossTextEncoder,
    TokenizationMismatchError,
    example_tokens,
    image_features_example,
    image_spec,
    text_tokenizer,
)
from .common import check_images as make_check_images
from .common import provenance
from .graphs import state_names
from .model_dir import ModelDir, ModelDirError

__all__ = [
    "CHECK_QUESTIONS",
    "AnswerMismatchError",
    "QuestionEncoder",
    "check_answers",
    "export_bundle",
    "load",
    "specs",
]

VISION, TEXT = "blip_vision_model", "blip_text_model"
BIAS = "question_bias"  # the answer decoder's additive mask over the question, (B, T)
# Questions the export checks the bundle on, of different lengths (a long one, over max_len,
# is added); the i-th is asked about check image i % n_images
CHECK_QUESTIONS = (
    "what color is the circle left of the square?",
    "how many?",
    "is there a red triangle above the blue square in this picture?",
    "what shape is it",
)
BEAMS = 3  # the beam width the export checks besides greedy


class AnswerMismatchError(ExportValidationError):
    """The bundle's answer differs from the Hugging Face model's ``generate``."""


def load(d: ModelDir) -> nn.Module:
    """The model of a BLIP VQA directory, checked to be one this adapter cuts (eval mode)."""
    from transformers import BlipForQuestionAnswering

    common.check_sub_configs(d, {"vision_config": VISION, "text_config": TEXT})
    model = common.from_pretrained(d, BlipForQuestionAnswering)
    text = model.config.text_config
    try:
        # the answer decoder and the question encoder share text_config (layout, position type)
        check_bert_decoder(model.text_decoder)
    except ValueError as e:
        raise ModelDirError(f"{d.path}: {e}") from e
    if text.sep_token_id is None:
        raise ModelDirError(
            f"{d.path}: config.json's text_config has no sep_token_id (BLIP's generate stops "
            "answering at it)"
        )
    if text.encoder_hidden_size != text.hidden_size:
        # the decoder's cross-attention projections take encoder_hidden_size inputs, and are
        # fed the question encoder's hidden_size states: generate() fails too
        raise ModelDirError(
            f"{d.path}: text_config.encoder_hidden_size {text.encoder_hidden_size} is not its "
            f"hidden_size {text.hidden_size}: the answer decoder cannot attend to the question"
        )
    return model.eval()


class QuestionEncoder(nn.Module):
    """(tokens, token_mask, image_features) -> the answer decoder's initial state (empty
    self-attention caches, every layer's cross K/V over the question states, question_bias):
    the question encoder (``text_encoder``, :class:`.blip_itm.CrossTextEncoder`), then the
    answer decoder's cross K/V of its states (:class:`.bert.BertCrossKV`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = CrossTextEncoder(model)
        self.cross = BertCrossKV(model.text_decoder)

    def forward(
        self, tokens: torch.Tensor, token_mask: torch.Tensor, image_features: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        x, bias = self.encoder(tokens, token_mask, image_features)  # (B, T, C), (B, T)
        cross = self.cross(x)  # every decoder layer's K, V: (B, H, T, D)
        empty = [kv[:, :, :0] for kv in cross]  # (B, H, 0, D): no answer token decoded yet
        return (*empty, *cross, bias)


def specs(model: nn.Module, image_size: int) -> tuple[list[GraphSpec], dict[str, str]]:
    """The three graphs (see the module docstring) and the step's state updates."""
    image = image_spec(model, image_size)
    text = model.config.text_config
    n_layers, vocab = int(text.num_hidden_layers), int(text.vocab_size)
    past, present, cross = state_names(n_layers)
    question = QuestionEncoder(model).eval()
    step = BertStep(model.text_decoder, cross_bias=True).eval()

    def question_example(b: int) -> tuple[torch.Tensor, ...]:
        tokens, mask = example_tokens(vocab, b, 4 + 2 * b)  # another T at each batch size
        return tokens, mask, image_features_example(image, b)

    def step_example(b: int) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            state = list(question(*question_example(b)))
            for _ in range(3):  # a cache of 3 tokens (the empty one: checked by `reference`)
                out = step(torch.randint(0, vocab, (b,)), *state)
                state[: len(past)] = out[2:]
        return (torch.randint(0, vocab, (b,)), *state)

    batch, text_axes = {0: "batch"}, {0: "batch", 1: "question"}
    cache, over_question = {0: "batch", 2: "past"}, {0: "batch", 2: "question"}
    graphs = [
        image,
        GraphSpec(
            "question_encoder.onnx",
            question,
            ["tokens", "token_mask", "image_features"],
            [*past, *cross, BIAS],
            {"tokens": text_axes, "token_mask": text_axes, "image_features": batch},
            example=question_example,
            notes="question encoder cross-attending to the image; the answer decoder's cross "
            "K/V over its states, empty self-attention caches, and the padding as an additive "
            "mask",
        ),
        GraphSpec(
            "decoder_step.onnx",
            step,
            ["tokens", *past, *cross, BIAS],
            ["logits", "attention", *present],
            {
                "tokens": batch,
                **dict.fromkeys(past, cache),
                **dict.fromkeys(cross, over_question),
                BIAS: text_axes,
            },
            example=step_example,
            notes="answer decoder: self-attention KV cache grows by one token a step; "
            "cross-attention over the question, question_bias added to its scores",
        ),
    ]
    return graphs, dict(zip(past, present, strict=True))


def _check_reference(
    model: nn.Module,
    graphs: list[GraphSpec],
    pixels: torch.Tensor,
    steps: int,
) -> dict[str, Any]:
    """The exported question encoder + step modules, stepped token by token from an empty
    cache over a padded batch, against the Hugging Face text decoder's logits for the same
    prefix over each question's own states alone (from the Hugging Face text encoder, cut to
    the question's length: the padding masked, which the Hugging Face decoder cannot do, see
    the module docstring); OutputValueError beyond the step's atol + rtol * |reference|."""
    text = model.config.text_config
    b = len(pixels)
    gen = torch.Generator().manual_seed(0)
    tokens, mask = example_tokens(int(text.vocab_size), b, 9)
    prefix = torch.randint(0, int(text.vocab_size), (b, steps), generator=gen)
    step_spec = graphs[2]
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=pixels).last_hidden_state
        q = model.text_encoder(
            input_ids=tokens, attention_mask=mask, encoder_hidden_states=image_embeds
        ).last_hidden_state
        ref = torch.cat(
            [
                model.text_decoder(
                    input_ids=prefix[j : j + 1], encoder_hidden_states=q[j : j + 1, : int(n_j)]
                ).logits
                for j, n_j in enumerate(mask.sum(1))
            ]
        )  # (B, steps, V)
        state = list(graphs[1].module(tokens, mask, graphs[0].module(pixels)))
        n = 2 * int(text.num_hidden_layers)
        errors = []
        for t in range(steps):
            out = step_spec.module(prefix[:, t], *state)
            state[:n] = out[2:]
            err = (out[0].double() - ref[:, t].double()).abs()
            if (err > step_spec.atol + step_spec.rtol * ref[:, t].double().abs()).any():
                raise OutputValueError(
                    f"decoder_step: step {t} logits differ from the Hugging Face model's by up "
                    f"to {err.max().item():.3g} (atol={step_spec.atol}, rtol={step_spec.rtol})"
                )
            errors.append(float(err.max()))
    return {"steps": steps, "max_abs_err_per_step": errors}


def _long_question(tok: Any, max_len: int) -> str:
    """A question longer than max_len tokens (special tokens included)."""
    text = "is the small red circle above the large blue square and"
    while len(tok(text, verbose=False).input_ids) <= max_len:
        text = f"{text} {text}"
    return f"{text}?"


def _runtime(bundle: Path) -> Any:
    """The bundle loaded by mmfast's runtime (:class:`mmfast.VQA`, a generative one)."""
    from mmfast.vqa import VQA

    return VQA.load(bundle, threads=1)


def check_answers(
    bundle: Path,
    model: nn.Module,
    tok: Any,
    images: list[np.ndarray],
    pixels: torch.Tensor,
    max_len: int,
    generation: GenerationConfig,
) -> dict[str, Any]:
    """The finished bundle (mmfast's runtime: tokenizer.json, numpy preprocessing, ONNX Runtime,
    :mod:`mmfast.generation`) against ``model.generate``; see the module docstring. `images`
    (uint8 (H, W, 3)) and `pixels` (the same preprocessed, (B_img, 3, S, S)) are the check
    images, `tok` the model's Hugging Face tokenizer. Raises TokenizationMismatchError or
    AnswerMismatchError naming the question; returns the report."""
    from mmfast import vqa_generative

    pipe = _runtime(bundle)
    questions = [*CHECK_QUESTIONS, _long_question(tok, max_len)]
    index = [i % len(images) for i in range(len(questions))]
    ids = [tok(q, truncation=True, max_length=max_len).input_ids for q in questions]
    for q, want in zip(questions, ids, strict=True):
        got = pipe.tokenizer.encode(q, max_length=max_len)
        if got != want:
            raise TokenizationMismatchError(
                f"question {q[:40]!r}: the bundle's tokens {got[:12]}... differ from the "
                f"Hugging Face tokenizer's {want[:12]}..."
            )
    new = min(generation.max_length - 1, int(blip.max_new_tokens(model)))
    ours = pipe.pixels(images)
    eos, pad = generation.eos_token_id, int(tok.pad_token_id)
    lengths = sorted({len(x) for x in ids})
    report: dict[str, Any] = {
        "images": len(images),
        "questions": len(questions),
        "question_tokens": lengths,
        "max_len": max_len,
        "max_new_tokens": new,
        "tokens_identical": True,
    }
    for beams in (1, BEAMS):
        mode = "greedy" if beams == 1 else f"beam{beams}"
        answers = vqa_generative.answer_generative(
            pipe, ours, index, questions, beam_size=beams, max_new_tokens=new
        )
        padded = vqa_generative.answer_generative(
            pipe, ours, index, questions, beam_size=beams, max_new_tokens=new, attend_padding=True
        )
        # generate() on the padded batch: what attend_padding reproduces
        batch_ids = torch.full((len(ids), lengths[-1]), pad, dtype=torch.int64)
        batch_mask = torch.zeros_like(batch_ids)
        for j, x in enumerate(ids):
            batch_ids[j, : len(x)], batch_mask[j, : len(x)] = torch.tensor(x), 1
        with torch.no_grad():
            ref_batch = model.generate(
                input_ids=batch_ids,
                pixel_values=pixels[index],
                attention_mask=batch_mask,
                num_beams=beams,
                do_sample=False,
                max_new_tokens=new,
            )
        for j, q in enumerate(questions):
            with torch.no_grad():  # generate() of the question alone: what the runtime gives
                row = model.generate(
                    input_ids=torch.tensor([ids[j]]),
                    pixel_values=pixels[index[j] : index[j] + 1],
                    attention_mask=torch.ones(1, len(ids[j]), dtype=torch.int64),
                    num_beams=beams,
                    do_sample=False,
                    max_new_tokens=new,
                )[0]
            for got, want, how in (
                (answers[j][2], row, "of the question alone"),
                (padded[j][2], ref_batch[j], "of the padded batch (attend_padding)"),
            ):
                want_ids = cut_at_eos(want.tolist()[1:], eos)
                if got != want_ids:
                    raise AnswerMismatchError(
                        f"{mode} answer to {q[:40]!r} (check image {index[j]}): the bundle "
                        f"gives {got}, model.generate {how} gives {want_ids}"
                    )
        report[f"{mode}_tokens_identical"] = True
        report[f"{mode}_answers"] = [a[0] for a in answers]
    return report


def export_bundle(
    d: ModelDir, tmp: Path, *, arch: str, kind: str, check_images: int = 4
) -> dict[str, Any]:
    """Write the whole generative vqa bundle of the BLIP VQA directory `d` into the staging
    directory `tmp` (graphs, tokenizer.json, manifest.json), validated; returns the manifest.
    check_images: generated images the questions are asked about (at least 2)."""
    preprocess = PreprocessConfig.from_hf(d.processor)
    model = load(d)
    vocab_size = int(model.config.text_config.vocab_size)
    tok, n_tokens, cleanup, ids, max_len = text_tokenizer(d, tmp, model)
    generation = GenerationConfig.from_hf(blip.generation_settings(d, model))
    for name, i in (
        ("decoder_start_token_id", generation.decoder_start_token_id),
        *(("eos_token_id", e) for e in generation.eos_token_id),
    ):
        if not 0 <= i < n_tokens:
            raise ModelDirError(
                f"{d.path}: {name} {i} is outside the tokenizer's {n_tokens} tokens"
            )
    special = SpecialTokens(
        pad=int(tok.pad_token_id),
        # what the post-processor puts around a question ([CLS] ... [SEP]); recorded, not added
        bos=tok.cls_token_id if tok.cls_token_id is not None else ids["pad"],
        eos=tok.sep_token_id if tok.sep_token_id is not None else ids["pad"],
        unk=ids.get("unk", ids["pad"]),
    )
    graphs, updates = specs(model, preprocess.size)
    report, sections = export_graphs(graphs, tmp)
    images = make_check_images(max(check_images, 2), preprocess.size)
    pixels = torch.from_numpy(preprocess_batch(images, preprocess))
    report["reference"] = _check_reference(model, graphs, pixels, 6)
    manifest: dict[str, Any] = {
        "task": "vqa",
        "kind": kind,
        "config": {
            **blip_itm.describe(d, model, arch),
            "decoder_vocab_size": vocab_size,
            "tokenizer_size": n_tokens,
            # generate() attends to a padded batch's padding; the runtime masks it unless asked
            "question_padding": "masked",
        },
        **common.bundle_sections(sections, preprocess, cleanup, special),
        "vqa": {"max_len": max_len, "generative": True},
        "decoder": {"state_updates": updates, "max_len": blip.max_new_tokens(model)},
        "generation": asdict(generation),
        "validation": report,
        "provenance": provenance(d),
    }
    write_manifest(tmp, manifest)
    report["hf_generate"] = check_answers(tmp, model, tok, images, pixels, max_len, generation)
    manifest["validation"] = report
    write_manifest(tmp, manifest)
    return manifest
