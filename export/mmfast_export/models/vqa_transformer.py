"""VQA with a joint (single-stream) multimodal Transformer: [CLS], the question's tokens and
the image's regions go through one encoder, in the manner of ViLT / VisualBERT; the answer is
classified from [CLS].

Why a joint encoder: ``vqa.py`` reads the regions through a few question-guided glimpses on
top of a separately encoded question, and its relative-position questions ("is the red circle
left of the blue square ?") score at chance. Here every layer lets a word attend to the regions
(to find "red circle") and a region attend to the words, so the comparison of two objects'
positions can be composed over the layers. Positions are explicit: each region gets a learned
embedding of its grid row and one of its grid column. Measured on the shapes data, trained from
scratch for 5 epochs, it does not get there (README, VQA per question type).

Cost: unlike the attention model, whose per-question work is a few vectors, this runs a
Transformer over 1 + T + R tokens for every question. So ``merge`` x ``merge`` neighbouring
CNN regions are concatenated into one token (patch merging, as in Swin): 8x8 regions become
4x4 tokens, about 2.5x less work per question; the merged vector keeps all four cells'
features in a fixed order (where in the merged cell an object lies stays readable) before the
learned projection to the model width.

Same graph interface as ``vqa.py``: ``encode_image`` (per image, once) and ``answer``
(regions, questions) -> (logits, attention), so the exported bundle runs unchanged through
``mmfast.VQA``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.tokenizer import WORD_LEVEL

from .encoder import ConvEncoder, EncoderConfig
from .text_encoder import SelfAttentionBlock

__all__ = ["VQATransformer", "VQATransformerConfig"]


@dataclass
class VQATransformerConfig:
    vocab_size: int
    num_answers: int
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dim: int = 128
    heads: int = 4
    layers: int = 4  # joint encoder layers over [CLS] + words + regions
    max_len: int = 24  # question tokens
    dropout: float = 0.1
    merge: int = 2  # merge x merge CNN regions per image token (must divide the grid)


class VQATransformer(nn.Module):
    kind = "vqa_transformer"

    def __init__(self, cfg: VQATransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.encoder = ConvEncoder(cfg.encoder)
        if cfg.merge < 1 or self.encoder.grid % cfg.merge:
            raise ValueError(
                f"merge must divide the CNN's {self.encoder.grid}x{self.encoder.grid} region "
                f"grid, got {cfg.merge}"
            )
        self.grid = g = self.encoder.grid // cfg.merge  # image tokens per side
        self.num_regions = g * g
        merged = self.encoder.dim * cfg.merge * cfg.merge
        self.region_proj = nn.Sequential(nn.Linear(merged, d), nn.LayerNorm(d))
        # 2-D position of token i = (row i // g, column i % g), row-major like the regions
        self.row_pos = nn.Parameter(torch.zeros(g, d))
        self.col_pos = nn.Parameter(torch.zeros(g, d))
        self.tok = nn.Embedding(cfg.vocab_size, d, padding_idx=WORD_LEVEL.pad)
        self.pos = nn.Embedding(cfg.max_len, d)  # word positions
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.type_emb = nn.Embedding(2, d)  # 0: text ([CLS] and words), 1: image
        for p in (self.row_pos, self.col_pos, self.cls):
            nn.init.normal_(p, std=0.02)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers)
        )
        self.ln = nn.LayerNorm(d)
        self.classifier = nn.Sequential(
            nn.Linear(d, 2 * d),
            nn.GELU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(2 * d, cfg.num_answers),
        )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> region tokens (B, R, D), R = g*g with g = CNN grid / merge:
        merged, projected features + 2-D position + the image type embedding (everything per
        image, computed once)."""
        regions, _ = self.encoder(images)  # (B, G*G, C), G = CNN grid
        b, c = regions.shape[0], regions.shape[2]
        g, m, d = self.grid, self.cfg.merge, self.cfg.dim
        x = regions.reshape(b, g, m, g, m, c).permute(0, 1, 3, 2, 4, 5)  # (B, g, g, m, m, C)
        x = x.reshape(b, g * g, m * m * c)  # (B, R, m*m*C)
        pos = (self.row_pos[:, None, :] + self.col_pos[None, :, :]).reshape(g * g, d)  # (R, D)
        return self.region_proj(x) + pos + self.type_emb.weight[1]

    def answer(
        self, regions: torch.Tensor, questions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """regions (Q, R, D) (one row per question, from ``encode_image``), questions (Q, T)
        (0 = <pad>, T <= max_len) -> answer logits (Q, A) and attention (Q, 1, R): the last
        layer's [CLS] attention over the regions alone (softmax over the region keys, i.e. its
        attention renormalised to the regions), mean over heads; each row sums to 1."""
        q, t = questions.shape
        n = regions.shape[1]
        words = self.tok(questions) + self.pos(torch.arange(t, device=questions.device))[None]
        words = words + self.type_emb.weight[0]  # (Q, T, D)
        cls = self.cls.expand(q, -1, -1) + self.type_emb.weight[0]  # (Q, 1, D)
        x = torch.cat([cls, words, regions], dim=1)  # (Q, L, D), L = 1 + T + R
        real = torch.ones(q, 1, dtype=torch.bool, device=questions.device)
        key_mask = torch.cat(
            [real, questions != WORD_LEVEL.pad, real.expand(q, n)], dim=1
        )  # (Q, L), True for keys to attend to; [CLS] and regions always
        for blk in self.blocks[:-1]:
            x = blk(x, key_mask)
        att = self._cls_region_attention(self.blocks[-1], x, n)  # (Q, R)
        x = self.ln(self.blocks[-1](x, key_mask))
        return self.classifier(x[:, 0]), att.unsqueeze(1)

    def _cls_region_attention(
        self, blk: SelfAttentionBlock, x: torch.Tensor, n: int
    ) -> torch.Tensor:
        """The block's [CLS] query against its last ``n`` keys (the regions): softmax(q k^T /
        sqrt(dh)) over those keys, mean over heads -> (Q, R). Only for reporting: the block
        itself runs on torch SDPA over every key."""
        b, _, d = x.shape
        dh = d // blk.heads
        h = blk.ln1(x)
        w, bias = blk.qkv.weight, blk.qkv.bias  # (3D, D), (3D,): rows [q; k; v]
        w_q, w_k, b_q, b_k = w[:d], w[d : 2 * d], bias[:d], bias[d : 2 * d]
        q = F.linear(h[:, :1], w_q, b_q).view(b, 1, blk.heads, dh).transpose(1, 2)  # (Q, H, 1, dh)
        k = F.linear(h[:, -n:], w_k, b_k).view(b, n, blk.heads, dh).transpose(1, 2)  # (Q, H, R, dh)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # (Q, H, 1, R)
        return w.mean(1)[:, 0]

    def forward(
        self, images: torch.Tensor, questions: torch.Tensor, image_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, S, S), questions (Q, T), image_index (Q,) -> logits (Q, A),
        attention (Q, 1, R)."""
        regions = self.encode_image(images).index_select(0, image_index)
        return self.answer(regions, questions)
