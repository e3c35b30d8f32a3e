"""Greedy and beam-search decoding over a captioner's ``step`` (batched, EOS handling, length
penalty). The reference the ONNX runtime must reproduce token for token.

A deliberate pair with ``mmfast.decoding`` (its numpy port, which the torch-free runtime runs):
the two are kept line for line alike so a reader can check one against the other, and
tests/test_decoding.py proves they give the same tokens. Change both together.

A model provides ``encode(images) -> state`` (a dict of batch-first tensors) and
``step(tokens (B,), state) -> (logits (B, V), state, attention (B, N))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

# Shared with the runtime's numpy decoding, so both ends agree on ids and stripping.
from mmfast.decoding import BOS, EOS, strip_special

__all__ = ["DecodeResult", "beam_search", "greedy", "strip_special"]

State = dict[str, torch.Tensor]


class StepModel(Protocol):
    def encode(self, images: torch.Tensor) -> State: ...

    def step(
        self, tokens: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State, torch.Tensor]: ...


@dataclass
class DecodeResult:
    tokens: list[list[int]]  # per input: generated ids, without <bos>, up to (excluding) <eos>
    scores: torch.Tensor  # (B,) total log-probability (beam: the length-penalised score)
    attention: list[torch.Tensor]  # per input: (len + 1, N) attention at each step (incl. <eos>)


@torch.no_grad()
def greedy(model: StepModel, state: State, max_len: int) -> DecodeResult:
    """Argmax decoding of a batch; finished sequences keep emitting <eos> (ignored)."""
    b = next(iter(state.values())).shape[0]
    tok = torch.full((b,), BOS, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    score = torch.zeros(b)
    out, atts = [], []
    for _ in range(max_len):
        logits, state, att = model.step(tok, state)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        nxt = logp.argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, EOS), nxt)
        score = score + torch.where(done, 0.0, logp.gather(1, nxt[:, None])[:, 0])
        out.append(nxt)
        atts.append(att)
        done = done | (nxt == EOS)
        tok = nxt
        if bool(done.all()):
            break
    seq = torch.stack(out, 1)  # (B, T)
    att = torch.stack(atts, 1)  # (B, T, N)
    tokens = [strip_special(s.tolist()) for s in seq]
    return DecodeResult(tokens, score, [att[i, : len(t) + 1] for i, t in enumerate(tokens)])


def _length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT: ((5 + |Y|) / 6) ^ alpha; alpha = 0 disables."""
    return ((5.0 + length.float()) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: StepModel,
    state: State,
    max_len: int,
    beam: int = 3,
    length_penalty: float = 0.0,
) -> DecodeResult:
    """Batched beam search. Beams live in a (B * K) batch; a finished beam only extends with
    <eos> at no cost, so it keeps its score. The best beam maximises score / lp(length), with
    length counted up to and including <eos>. beam=1 with length_penalty=0 is greedy."""
    b = next(iter(state.values())).shape[0]
    k = beam
    state = {n: v.repeat_interleave(k, dim=0) for n, v in state.items()}  # (B*K, ...)
    tok = torch.full((b * k,), BOS, dtype=torch.long)
    scores = torch.zeros(b, k)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only one
    done = torch.zeros(b * k, dtype=torch.bool)
    lengths = torch.zeros(b * k, dtype=torch.long)
    hist = torch.zeros(b * k, 0, dtype=torch.long)
    att_hist: torch.Tensor | None = None
    base = (torch.arange(b) * k)[:, None]  # (B, 1)
    for _ in range(max_len):
        logits, state, att = model.step(tok, state)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        v = logp.shape[-1]
        eos_only = torch.full_like(logp, float("-inf"))
        eos_only[:, EOS] = 0.0
        logp = torch.where(done[:, None], eos_only, logp)
        cand = (scores.view(b * k, 1) + logp).view(b, k * v)  # (B, K*V)
        top, idx = cand.topk(k, dim=-1)  # (B, K)
        src = (base + idx // v).view(-1)  # (B*K,) beam each new beam extends
        nxt = (idx % v).view(-1)
        state = {n: s.index_select(0, src) for n, s in state.items()}
        was_done = done.index_select(0, src)
        lengths = lengths.index_select(0, src) + (~was_done).long()
        done = was_done | (nxt == EOS)
        hist = torch.cat([hist.index_select(0, src), nxt[:, None]], 1)
        a = att.index_select(0, src)[:, None]  # (B*K, 1, N)
        att_hist = a if att_hist is None else torch.cat([att_hist.index_select(0, src), a], 1)
        scores = top
        tok = nxt
        if bool(done.all()):
            break
    final = scores / _length_penalty(lengths.view(b, k), length_penalty)  # (B, K)
    best = final.argmax(-1)  # (B,)
    rows = (torch.arange(b) * k + best).tolist()
    tokens = [strip_special(hist[r].tolist()) for r in rows]
    assert att_hist is not None
    return DecodeResult(
        tokens,
        final.gather(1, best[:, None])[:, 0],
        [att_hist[r, : len(t) + 1] for r, t in zip(rows, tokens, strict=True)],
    )
