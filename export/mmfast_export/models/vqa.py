"""VQA: question encoder, question-guided (stacked, multi-glimpse) attention over the image
regions, classifier over the answers.

Each glimpse also reports where it looked (the attention-weighted region centre), which
relative-position questions need."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .encoder import ConvEncoder, EncoderConfig
from .text_encoder import TextEncoder, TextEncoderConfig

__all__ = ["VQAConfig", "VQAModel"]


@dataclass
class VQAConfig:
    vocab_size: int
    num_answers: int
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dim: int = 128
    text_layers: int = 2
    heads: int = 4
    glimpses: int = 2
    att: int = 128
    max_len: int = 24
    dropout: float = 0.1


class VQAModel(nn.Module):
    kind = "vqa"

    def __init__(self, cfg: VQAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.encoder)
        c, d = self.encoder.dim, cfg.dim
        self.question = TextEncoder(
            TextEncoderConfig(cfg.vocab_size, d, cfg.heads, cfg.text_layers, cfg.max_len)
        )
        self.region_proj = nn.Linear(c, d)
        g = self.encoder.grid
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, g), torch.linspace(-1, 1, g), indexing="ij")
        # (N, 2) region centres (x, y), row-major like the regions
        self.register_buffer("coords", torch.stack([xs.flatten(), ys.flatten()], -1), False)
        # glimpse g: a query from the question's words (w_g picks them: "red circle" for the
        # first object, "blue square" for the second), then over the regions
        # logits_i = v_g^T (relu(W_v r_i) * relu(W_u q_g)); u_{g+1} = u_g + W_c ctx_g
        self.word_att = nn.ModuleList(nn.Linear(d, 1) for _ in range(cfg.glimpses))
        self.att_v = nn.ModuleList(nn.Linear(d, cfg.att) for _ in range(cfg.glimpses))
        self.att_u = nn.ModuleList(nn.Linear(d, cfg.att) for _ in range(cfg.glimpses))
        self.att_w = nn.ModuleList(nn.Linear(cfg.att, 1) for _ in range(cfg.glimpses))
        self.ctx_proj = nn.ModuleList(nn.Linear(d, d) for _ in range(cfg.glimpses))
        # classifier input: u, and per glimpse: context, word query, attended centre (x, y)
        self.classifier = nn.Sequential(
            nn.Linear(d + cfg.glimpses * (2 * d + 2), 2 * d),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * d, cfg.num_answers),
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> projected regions (B, N, D)."""
        regions, _ = self.encoder(images)
        return self.region_proj(regions)

    def answer(
        self, regions: torch.Tensor, questions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """regions (Q, N, D) (one row per question), questions (Q, T) ->
        answer logits (Q, A), attention (Q, G, N)."""
        words, u, mask = self.question(questions)  # (Q, T, D), (Q, D), (Q, T)
        feats, atts = [], []
        for g in range(self.cfg.glimpses):
            wl = self.word_att[g](words).squeeze(-1).masked_fill(~mask, float("-inf"))
            wq = torch.bmm(torch.softmax(wl, -1).unsqueeze(1), words).squeeze(1)  # (Q, D)
            q = wq + u
            h = torch.relu(self.att_v[g](regions)) * torch.relu(self.att_u[g](q)).unsqueeze(1)
            a = torch.softmax(self.att_w[g](h).squeeze(-1), dim=-1)  # (Q, N)
            ctx = torch.bmm(a.unsqueeze(1), regions).squeeze(1)  # (Q, D)
            where = a @ self.coords  # (Q, 2): attended centre, for left/right/above/below
            u = u + self.ctx_proj[g](ctx)
            feats += [ctx, wq, where]
            atts.append(a)
        logits = self.classifier(torch.cat([u, *feats], dim=-1))
        return logits, torch.stack(atts, 1)

    def forward(
        self, images: torch.Tensor, questions: torch.Tensor, image_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        regions = self.encode_image(images).index_select(0, image_index)
        return self.answer(regions, questions)
