"""A small bidirectional Transformer text encoder (padding-masked, torch SDPA inside)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmfast.tokenizer import WORD_LEVEL

__all__ = ["SelfAttentionBlock", "TextEncoder", "TextEncoderConfig"]


@dataclass
class TextEncoderConfig:
    vocab_size: int
    dim: int = 128
    heads: int = 4
    layers: int = 2
    max_len: int = 40
    dropout: float = 0.1


class SelfAttentionBlock(nn.Module):
    """Pre-LN block: x + MHA(LN(x)) then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); key_mask (B, T) bool, True for real tokens."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))  # (B, T, D)
        return x + self.drop(self.mlp(self.ln2(x)))


class TextEncoder(nn.Module):
    """tokens (B, T) (0 = <pad>) -> token features (B, T, D), pooled (B, D) (masked mean)."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.dim, padding_idx=WORD_LEVEL.pad)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(cfg.dim, cfg.heads, cfg.dropout) for _ in range(cfg.layers)
        )
        self.ln = nn.LayerNorm(cfg.dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = tokens.shape[1]
        mask = tokens != WORD_LEVEL.pad  # (B, T)
        pos = torch.arange(t, device=tokens.device)
        x = self.tok(tokens) + self.pos(pos)[None]  # (B, T, D)
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.ln(x)
        m = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D)
        return x, pooled, mask
