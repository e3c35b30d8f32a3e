"""Greedy and beam-search decoding in numpy over an exported decoder step (torch-free).

Mirrors ``mmfast_export.decoding`` (the PyTorch reference) step for step, a deliberate pair
kept line for line alike (change both together), so the ONNX runtime reproduces its captions
token for token: same EOS handling (a finished sequence extends only
with <eos> at no cost), same GNMT length penalty, same selection order. Log-probabilities come
from mmfast's own log_softmax kernel.

The special-token ids are a bundle's (``special_tokens=manifest.special_tokens``); they default
to the word-level vocabulary's (:data:`mmfast.tokenizer.WORD_LEVEL`), which ``PAD``, ``BOS`` and
``EOS`` here name for the PyTorch reference.

A step is ``step(tokens (B,) int64, state) -> (logits (B, V), state, attention (B, N))``,
state a dict of batch-first arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import ops
from .tokenizer import WORD_LEVEL, SpecialTokens

__all__ = ["BOS", "EOS", "PAD", "DecodeResult", "StepFn", "beam_search", "greedy", "strip_special"]

PAD, BOS, EOS = WORD_LEVEL.pad, WORD_LEVEL.bos, WORD_LEVEL.eos  # the word-level ids, by name
State = dict[str, np.ndarray]
StepFn = Callable[[npt.NDArray[np.int64], State], tuple[np.ndarray, State, np.ndarray]]


@dataclass
class DecodeResult:
    tokens: list[list[int]]  # per input: generated ids, without <bos>, up to (excluding) <eos>
    scores: npt.NDArray[np.float32]  # (B,) log-probability (beam: the length-penalised score)
    attention: list[np.ndarray]  # per input: (len + 1, N) attention at each step (incl. <eos>)


def strip_special(ids: list[int], special_tokens: SpecialTokens = WORD_LEVEL) -> list[int]:
    """Generated ids up to (excluding) the first <eos>, without <pad> and <bos>."""
    out = []
    for i in ids:
        if i == special_tokens.eos:
            break
        if i not in (special_tokens.pad, special_tokens.bos):
            out.append(i)
    return out


def _batch(state: State) -> int:
    return int(next(iter(state.values())).shape[0])


def greedy(
    step: StepFn, state: State, max_len: int, *, special_tokens: SpecialTokens = WORD_LEVEL
) -> DecodeResult:
    """Argmax decoding of a batch; finished sequences keep emitting <eos> (ignored)."""
    if max_len < 1:
        raise ValueError(f"max_len: must be >= 1, got {max_len}")
    eos = special_tokens.eos
    b = _batch(state)
    tok = np.full(b, special_tokens.bos, np.int64)
    done = np.zeros(b, bool)
    score = np.zeros(b, np.float32)
    out, atts = [], []
    for _ in range(max_len):
        logits, state, att = step(tok, state)
        logp = ops.log_softmax(np.ascontiguousarray(logits, dtype=np.float32))  # (B, V)
        nxt = logp.argmax(-1)
        nxt = np.where(done, eos, nxt)
        score = score + np.where(done, 0.0, logp[np.arange(b), nxt]).astype(np.float32)
        out.append(nxt)
        atts.append(att)
        done |= nxt == eos
        tok = nxt.astype(np.int64)
        if done.all():
            break
    seq = np.stack(out, 1)  # (B, T)
    att_all = np.stack(atts, 1)  # (B, T, N)
    tokens = [strip_special(s.tolist(), special_tokens) for s in seq]
    return DecodeResult(tokens, score, [att_all[i, : len(t) + 1] for i, t in enumerate(tokens)])


def _length_penalty(length: np.ndarray, alpha: float) -> np.ndarray:
    """GNMT: ((5 + |Y|) / 6) ^ alpha; alpha = 0 disables."""
    result: np.ndarray = ((5.0 + length.astype(np.float32)) / 6.0) ** np.float32(alpha)
    return result


def _topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise k largest values, descending, ties to the lower index. x: (B, M)."""
    part = (
        np.argpartition(-x, k - 1, axis=-1)[:, :k]
        if k < x.shape[1]
        else np.tile(np.arange(x.shape[1]), (x.shape[0], 1))
    )
    vals = np.take_along_axis(x, part, -1)
    order = np.lexsort((part, -vals), axis=-1)  # by value desc, then index asc
    idx = np.take_along_axis(part, order, -1)
    return np.take_along_axis(x, idx, -1), idx


def beam_search(
    step: StepFn,
    state: State,
    max_len: int,
    beam: int = 3,
    length_penalty: float = 0.0,
    constant: frozenset[str] = frozenset(),
    *,
    special_tokens: SpecialTokens = WORD_LEVEL,
) -> DecodeResult:
    """Batched beam search; beams live in a (B*K) batch. The best beam maximises
    score / lp(length), length counted up to and including <eos>. beam=1 with
    length_penalty=0 is greedy.

    constant: state entries the step passes through unchanged (an image's regions, its
    cross-attention K/V). Beams only ever continue beams of the same image, whose copies of
    such entries are identical, so they are not reordered at every step (at batch 32 x beam 4
    that was megabytes of copying per token)."""
    if max_len < 1:
        raise ValueError(f"max_len: must be >= 1, got {max_len}")
    if beam < 1:
        raise ValueError(f"beam_size: must be >= 1, got {beam}")
    eos = special_tokens.eos
    b, k = _batch(state), beam
    state = {n: np.repeat(v, k, axis=0) for n, v in state.items()}  # (B*K, ...)
    tok = np.full(b * k, special_tokens.bos, np.int64)
    scores = np.zeros((b, k), np.float32)
    scores[:, 1:] = -np.inf  # all beams start identical: keep only one
    done = np.zeros(b * k, bool)
    lengths = np.zeros(b * k, np.int64)
    hist = np.zeros((b * k, 0), np.int64)
    att_hist: np.ndarray | None = None
    base = (np.arange(b) * k)[:, None]
    for _ in range(max_len):
        logits, state, att = step(tok, state)
        logp = ops.log_softmax(np.ascontiguousarray(logits, dtype=np.float32))  # (B*K, V)
        v = logp.shape[-1]
        logp[done] = -np.inf
        logp[done, eos] = 0.0
        cand = (scores.reshape(b * k, 1) + logp).reshape(b, k * v)
        top, idx = _topk(cand, k)  # (B, K)
        src = (base + idx // v).reshape(-1)
        nxt = (idx % v).reshape(-1).astype(np.int64)
        state = {n: (s if n in constant else s[src]) for n, s in state.items()}
        was_done = done[src]
        lengths = lengths[src] + (~was_done)
        done = was_done | (nxt == eos)
        hist = np.concatenate([hist[src], nxt[:, None]], 1)
        a = att[src][:, None]
        att_hist = a if att_hist is None else np.concatenate([att_hist[src], a], 1)
        scores = top.astype(np.float32)
        tok = nxt
        if done.all():
            break
    final = scores / _length_penalty(lengths.reshape(b, k), length_penalty)
    best = final.argmax(-1)
    rows = (np.arange(b) * k + best).tolist()
    tokens = [strip_special(hist[r].tolist(), special_tokens) for r in rows]
    assert att_hist is not None
    return DecodeResult(
        tokens,
        final[np.arange(b), best].astype(np.float32),
        [att_hist[r, : len(t) + 1] for r, t in zip(rows, tokens, strict=True)],
    )
