"""Generative visual question answering over a bundle (ONNX Runtime, no torch): an answer
decoder writes the answer, token by token, as Hugging Face ``BlipForQuestionAnswering.generate``
does (greedy or beam search, :mod:`mmfast.generation`).

A generative ``vqa`` bundle (``vqa.generative``; exported from BLIP VQA by
``mmfast_export.hf.blip_vqa``) has three graphs:

- ``image_encoder.onnx``: ``images`` (N, 3, S, S) -> ``image_features`` (N, P, C_vis), run once
  per image however many questions are asked about it;
- ``question_encoder.onnx``: ``tokens`` (B, T) int64, ``token_mask`` (B, T) int64,
  ``image_features`` (B, P, C_vis) (each question's image's) -> the answer decoder's whole
  initial state: empty self-attention caches ``past_*`` (B, H, 0, D), the cross-attention K/V
  over the question states ``cross_*`` (B, H, T, D), and ``question_bias`` (B, T), the
  question's padding as an additive mask on the decoder's cross-attention scores;
- ``decoder_step.onnx``: ``tokens`` (B,) + that state -> ``logits`` (B, V), ``attention``
  (B, T) and the caches one token longer (the manifest's ``decoder.state_updates``).

All questions of a call are encoded in one batch and answered in one decoding loop. The
padding is masked, so each question is answered as ``generate`` answers it alone, whatever else
is in the batch (``generate`` itself attends to a padded batch's padding: ``attend_padding``
reproduces that, for checking against it).

This module is what :class:`mmfast.VQA` calls for a generative bundle; it is given the loaded
pipeline (sessions, tokenizer, preprocessing) and reads its manifest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from . import generation as hf_generation
from ._checks import positive_int
from ._pipeline import pad_tokens
from .bundle import BundleFormatError, BundleMismatchError
from .captioner import MAX_BEAM_SIZE, MAX_CAPTION_LEN
from .decoding import DecodeResult, State
from .hf_tokenizer import HFTokenizer

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["QUESTION_BIAS", "answer_generative", "check_bundle", "graph_files"]

IMAGE, QUESTION, STEP = "image_encoder.onnx", "question_encoder.onnx", "decoder_step.onnx"
QUESTION_BIAS = "question_bias"  # (B, T) float32: 0 where a question token is, a large negative


def graph_files() -> list[str]:
    """The graphs a generative vqa bundle has, one session each."""
    return [IMAGE, QUESTION, STEP]


def check_bundle(pipe: Pipeline) -> None:
    """BundleError unless `pipe`'s bundle is a generative vqa bundle whose graphs take and give
    what :func:`answer_generative` uses (called when the pipeline is loaded)."""
    m = pipe.bundle.manifest
    where = pipe.bundle.path / "manifest.json"
    if m.vqa is None or not m.vqa.generative or m.decoder is None or m.generation is None:
        raise BundleFormatError(
            f"{where}: not a generative vqa bundle (vqa.generative, decoder and generation)"
        )
    if not isinstance(pipe.tokenizer, HFTokenizer):
        # the question is tokenised and cut as the model's own (Hugging Face) tokenizer does
        raise BundleFormatError(f"{where}: a generative vqa bundle needs a tokenizer.json")
    pipe.require_io(IMAGE, ["images"], ["image_features"])
    pipe.require_io(QUESTION, ["tokens", "token_mask", "image_features"], [QUESTION_BIAS])
    # the question encoder makes the decoder's whole state; the step takes it with the previous
    # token and gives the logits, the attention and the state entries it updates
    state = pipe.sessions[QUESTION].output_names
    unknown = [name for name in m.decoder.state_updates if name not in state]
    if unknown:
        raise BundleMismatchError(
            f"{where}: decoder.state_updates names {', '.join(unknown)}, which {QUESTION} "
            f"does not make (it makes {state})"
        )
    pipe.require_io(
        STEP, ["tokens", *state], ["logits", "attention", *m.decoder.state_updates.values()]
    )
    # a vocabulary shorter than the logits would turn the ids past its end into <unk>; a Hugging
    # Face model's embedding table may be padded past its tokenizer
    n = len(pipe.tokenizer)
    v = pipe.fixed_dim(STEP, "logits", -1)
    if v is not None and v < n:
        raise BundleMismatchError(
            f"{pipe.bundle.path / STEP}: {v} logits, but the vocabulary {m.vocab} has {n} tokens"
        )


def _question_ids(pipe: Pipeline, questions: Sequence[str], max_len: int) -> list[list[int]]:
    """Each question's ids as the model's Hugging Face tokenizer gives them with
    ``truncation=True, max_length=max_len`` ("[CLS] question [SEP]" for BLIP, the text cut
    first so [SEP] stays); ValueError naming an empty question."""
    tok = pipe.tokenizer
    assert isinstance(tok, HFTokenizer)  # check_bundle
    ids = []
    for j, q in enumerate(questions):
        if not isinstance(q, str):
            raise TypeError(f"questions[{j}]: expected a str, got {type(q).__name__}")
        if not q.strip():
            # the model would answer "[CLS] [SEP]" about nothing: an answer with no question
            raise ValueError(f"questions[{j}]: the question is empty")
        ids.append(tok.encode(q, max_length=max_len))
    return ids


def answer_generative(
    pipe: Pipeline,
    pixels: np.ndarray,
    image_index: list[int],
    questions: list[str],
    *,
    beam_size: int = 1,
    max_new_tokens: int | None = None,
    attend_padding: bool = False,
) -> list[tuple[str, float, list[int]]]:
    """Answer questions[j] about image pixels[image_index[j]]; per question (answer text,
    score, answer token ids without [DEC] and the closing [SEP]).

    pixels: (N_images, 3, S, S) float32, preprocessed (``pipe.pixels``). beam_size: 1 (greedy)
    to the captioner's MAX_BEAM_SIZE; max_new_tokens: answer tokens at most (default: the
    model's generation config, ``max_length - 1``; at most the decoder's position table).
    Answers are decoded exactly as ``model.generate(input_ids, pixel_values, attention_mask,
    num_beams=beam_size, max_new_tokens=...)`` decodes the question alone. attend_padding: let
    the decoder attend to the padding of the batch's shorter questions, as ``generate`` does
    on a padded batch (the answers then depend on the batch; for checking against it).

    score: the answer's probability under the model, exp(sum of its tokens' log-probabilities,
    the closing [SEP] included); for beam search this is transformers' ``sequences_scores``
    with the length penalty undone (score * generated_len ** length_penalty), so greedy and
    beam scores are the same quantity.
    """
    m = pipe.bundle.manifest
    assert m.vqa is not None and m.decoder is not None and m.generation is not None
    cfg = m.generation
    s = pipe.preprocess_config.size
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
        raise ValueError(f"pixels: expected a float32 array, got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1:] != (3, s, s) or len(pixels) == 0:
        raise ValueError(f"pixels: expected shape (N, 3, {s}, {s}), got {pixels.shape}")
    if len(questions) == 0:
        raise ValueError("questions: nothing to answer")
    if len(image_index) != len(questions):
        raise ValueError(f"image_index: {len(image_index)} entries for {len(questions)} questions")
    for j, i in enumerate(image_index):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(pixels):
            raise ValueError(f"image_index[{j}]: expected an image 0..{len(pixels) - 1}, got {i!r}")
    beam_size = positive_int("beam_size", beam_size, at_most=MAX_BEAM_SIZE)
    # the answer decoder's position table (a bundle without one: the captioner's loop bound)
    limit = m.decoder.max_len or MAX_CAPTION_LEN
    if max_new_tokens is None:
        max_new_tokens = min(cfg.max_length - 1, limit)
    new = positive_int("max_new_tokens", max_new_tokens, at_most=limit)

    ids = _question_ids(pipe, questions, m.vqa.max_len)
    tokens = pad_tokens(ids, m.vqa.max_len, pipe.tokenizer.pad_id)  # (B, T) T = longest
    lengths = np.array([len(x) for x in ids])
    mask = (np.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(np.int64)  # (B, T)
    feats = pipe.run(IMAGE, {"images": pixels})["image_features"]  # (N, P, C_vis)
    state: State = pipe.run(
        QUESTION,
        {
            "tokens": tokens,
            "token_mask": mask,
            "image_features": feats[np.asarray(image_index, np.int64)],  # (B, P, C_vis)
        },
    )
    if attend_padding:
        state[QUESTION_BIAS] = np.zeros_like(state[QUESTION_BIAS])
    updates = list(m.decoder.state_updates.items())

    def step(tok: np.ndarray, st: State) -> tuple[np.ndarray, State, np.ndarray]:
        outs = pipe.run(STEP, {"tokens": tok.astype(np.int64, copy=False), **st})
        nxt = dict(st)
        for name_in, name_out in updates:
            nxt[name_in] = outs[name_out]
        return outs["logits"], nxt, outs["attention"]

    r: DecodeResult
    if beam_size == 1:
        r = hf_generation.greedy(step, state, cfg, new)
        logp = [float(x) for x in r.scores]
    else:
        # the cross K/V and the question mask pass through every step unchanged
        constant = frozenset(state) - {name for name, _ in updates}
        r = hf_generation.beam_search(step, state, cfg, new, beam_size, constant=constant)
        # sequences_scores = sum log p / generated_len ** length_penalty, generated_len
        # counting the closing [SEP] (absent where the answer ran to max_new_tokens)
        logp = [
            float(x) * float(min(len(t) + 1, new)) ** cfg.length_penalty
            for x, t in zip(r.scores, r.tokens, strict=True)
        ]
    return [
        (pipe.tokenizer.decode(t), math.exp(lp), t) for t, lp in zip(r.tokens, logp, strict=True)
    ]
