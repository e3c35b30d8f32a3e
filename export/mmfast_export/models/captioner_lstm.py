"""Show, Attend and Tell: CNN regions + LSTM decoder with additive soft attention.

Written as an explicit step ``(token, state) -> (logits, new state, attention)`` with no Python
control flow inside, so that ``decoder_step.onnx`` is one step. Per-image work (the attention
projection ``W_a · regions`` and the initial h, c) happens once, in ``encode``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.tokenizer import WORD_LEVEL

from .encoder import ConvEncoder, EncoderConfig

__all__ = ["LSTMCaptioner", "LSTMCaptionerConfig"]

State = dict[str, torch.Tensor]


@dataclass
class LSTMCaptionerConfig:
    vocab_size: int
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    embed: int = 128
    hidden: int = 256
    att: int = 128
    dropout: float = 0.2
    max_len: int = 32


class LSTMCaptioner(nn.Module):
    kind = "caption_lstm"

    def __init__(self, cfg: LSTMCaptionerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.encoder)
        c, h, a = self.encoder.dim, cfg.hidden, cfg.att
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed)
        self.att_regions = nn.Linear(c, a)  # W_a: applied once per image, in encode()
        self.att_hidden = nn.Linear(h, a)  # U_a
        self.att_score = nn.Linear(a, 1)  # v_a
        self.init_h = nn.Linear(c, h)
        self.init_c = nn.Linear(c, h)
        self.gate = nn.Linear(h, 1)  # beta_t = sigmoid(f_beta(h_{t-1})), a scalar per step
        self.cell = nn.LSTMCell(cfg.embed + c, h)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(h + c, cfg.vocab_size)

    def encode(self, images: torch.Tensor) -> State:
        """images (B, 3, S, S) -> initial decoder state (all batch-first)."""
        regions, _ = self.encoder(images)  # (B, N, C)
        mean = regions.mean(1)  # (B, C)
        return {
            "h": torch.tanh(self.init_h(mean)),  # (B, H)
            "c": torch.tanh(self.init_c(mean)),  # (B, H)
            "regions": regions,  # (B, N, C)
            "att_proj": self.att_regions(regions),  # (B, N, A) = W_a · regions
        }

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """tokens (B,) int64 -> logits (B, V), new state, attention weights alpha (B, N)."""
        h, c, regions, att_proj = state["h"], state["c"], state["regions"], state["att_proj"]
        e = self.embed(tokens)  # (B, E)
        # additive attention: e_ti = v_a^T tanh(W_a a_i + U_a h_{t-1}); alpha = softmax_i(e_t)
        scores = self.att_score(torch.tanh(att_proj + self.att_hidden(h).unsqueeze(1)))
        alpha = torch.softmax(scores.squeeze(-1), dim=-1)  # (B, N)
        ctx = torch.bmm(alpha.unsqueeze(1), regions).squeeze(1)  # (B, C)
        ctx = torch.sigmoid(self.gate(h)) * ctx  # gated context z_t = beta_t * sum_i alpha_i a_i
        h, c = self.cell(torch.cat([e, ctx], dim=-1), (h, c))  # (B, H)
        logits = self.out(self.drop(torch.cat([h, ctx], dim=-1)))  # (B, V)
        return logits, {"h": h, "c": c, "regions": regions, "att_proj": att_proj}, alpha

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing. tokens (M, T) inputs (<bos> ...); image_index (M,) picks each
        caption's image (several captions per image share one encoder pass).
        Returns logits (M, T, V) and attention (M, T, N)."""
        state = self.encode(images)
        if image_index is not None:
            state = {k: v.index_select(0, image_index) for k, v in state.items()}
        logits, alphas = [], []
        for t in range(tokens.shape[1]):
            lg, state, a = self.step(tokens[:, t], state)
            logits.append(lg)
            alphas.append(a)
        return torch.stack(logits, 1), torch.stack(alphas, 1)


def caption_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over non-pad targets. logits (M, T, V), targets (M, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=WORD_LEVEL.pad)
