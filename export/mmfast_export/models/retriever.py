"""Dual-encoder retriever (image tower, text tower -> L2-normalised embeddings, InfoNCE with a
learned temperature) and an optional cross-attention re-ranker for the top-k."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import ConvEncoder, EncoderConfig
from .text_encoder import TextEncoder, TextEncoderConfig

__all__ = ["CrossReranker", "Retriever", "RetrieverConfig", "info_nce"]


@dataclass
class RetrieverConfig:
    vocab_size: int
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    text_dim: int = 128
    text_layers: int = 2
    heads: int = 4
    embed_dim: int = 256
    max_len: int = 40
    rerank: bool = True
    pool_heads: int = 4
    init_temperature: float = 0.07


class CrossReranker(nn.Module):
    """The text attends over the image regions; scores one (text, image) pair.

    text tokens (P, T, D), regions (P, N, D) -> score (P,)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_t = nn.LayerNorm(dim)
        self.ln_r = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, regions: torch.Tensor
    ) -> torch.Tensor:
        p, t, d = text.shape
        n = regions.shape[1]
        hd = d // self.heads
        q = self.q(self.ln_t(text)).view(p, t, self.heads, hd).transpose(1, 2)  # (P, H, T, hd)
        k, v = self.kv(self.ln_r(regions)).chunk(2, dim=-1)
        k = k.view(p, n, self.heads, hd).transpose(1, 2)  # (P, H, N, hd)
        v = v.view(p, n, self.heads, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, k, v)  # (P, H, T, hd)
        a = self.proj(a.transpose(1, 2).reshape(p, t, d))  # (P, T, D): what each word found
        per_tok = self.mlp(torch.cat([text, a], dim=-1)).squeeze(-1)  # (P, T) word-level match
        # a pair matches if every word finds its counterpart: soft-min over the words
        per_tok = per_tok.masked_fill(~text_mask, 1e4)
        return -torch.logsumexp(-per_tok, dim=-1)  # (P,)


class Retriever(nn.Module):
    kind = "retrieval"

    def __init__(self, cfg: RetrieverConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.encoder)
        c = self.encoder.dim
        self.text = TextEncoder(
            TextEncoderConfig(cfg.vocab_size, cfg.text_dim, cfg.heads, cfg.text_layers, cfg.max_len)
        )
        self.img_attn = nn.Linear(c, cfg.pool_heads)  # multi-head attention pooling
        self.img_proj = nn.Sequential(
            nn.Linear((cfg.pool_heads + 1) * c, c), nn.GELU(), nn.Linear(c, cfg.embed_dim)
        )
        self.txt_proj = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.text_dim), nn.GELU(), nn.Linear(cfg.text_dim, cfg.embed_dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))
        self.reranker: CrossReranker | None = None
        if cfg.rerank:
            self.region_proj = nn.Linear(c, cfg.text_dim)
            self.reranker = CrossReranker(cfg.text_dim, cfg.heads)

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, S, S) -> embedding (B, E) (unit norm), regions (B, N, C)."""
        regions, pooled = self.encoder(images)
        w = torch.softmax(self.img_attn(regions), dim=1)  # (B, N, P): P pooling heads
        att = torch.bmm(w.transpose(1, 2), regions).flatten(1)  # (B, P * C)
        emb = self.img_proj(torch.cat([att, pooled], dim=-1))
        return F.normalize(emb, dim=-1), regions

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (B, T) -> embedding (B, E) (unit norm), token features (B, T, D), mask (B, T)."""
        feats, pooled, mask = self.text(tokens)
        return F.normalize(self.txt_proj(pooled), dim=-1), feats, mask

    def temperature_scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def rerank(
        self, text_feats: torch.Tensor, text_mask: torch.Tensor, regions: torch.Tensor
    ) -> torch.Tensor:
        """Pairwise scores (P,) for aligned pairs of texts (P, T, D) and image regions (P, N, C)."""
        assert self.reranker is not None
        return self.reranker(text_feats, text_mask, self.region_proj(regions))


def info_nce(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matching pairs (row i of each is a pair)."""
    logits = scale * txt @ img.t()  # (B, B): text i vs image j
    target = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
