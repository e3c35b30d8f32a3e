"""CNN regions + a small Transformer decoder (causal self-attention with a KV cache,
cross-attention to the regions, torch SDPA inside).

``encode`` computes every layer's cross-attention keys/values once per image. ``step`` takes
one token and a fixed-size state: the self-attention cache ``(B, L, H, T_max, dh)`` and the
position ``pos (B,)``; it writes the new key/value at ``pos`` with a one-hot mask (no
data-dependent shapes, no Python control flow) and attends to positions ``<= pos``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import ConvEncoder, EncoderConfig

__all__ = ["TransformerCaptioner", "TransformerCaptionerConfig"]

State = dict[str, torch.Tensor]


@dataclass
class TransformerCaptionerConfig:
    vocab_size: int
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dim: int = 192
    heads: int = 4
    layers: int = 2
    dropout: float = 0.1
    max_len: int = 32


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.q_cross = nn.Linear(dim, dim)
        self.kv_cross = nn.Linear(dim, 2 * dim)  # applied to the regions once, in encode()
        self.proj_cross = nn.Linear(dim, dim)
        self.ln3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def heads_split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, dh)

    def heads_merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = x.shape
        return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, D)

    def cross_kv(self, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_cross(mem).chunk(2, dim=-1)
        return self.heads_split(k), self.heads_split(v)  # (B, H, N, dh) each


class TransformerCaptioner(nn.Module):
    kind = "caption_transformer"

    def __init__(self, cfg: TransformerCaptionerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = ConvEncoder(cfg.encoder)
        d = cfg.dim
        self.mem_proj = nn.Sequential(nn.Linear(self.encoder.dim, d), nn.LayerNorm(d))
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Embedding(cfg.max_len, d)
        self.layers = nn.ModuleList(
            DecoderLayer(d, cfg.heads, cfg.dropout) for _ in range(cfg.layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, images: torch.Tensor) -> State:
        """images (B, 3, S, S) -> initial state: cross K/V of every layer, an empty cache."""
        regions, _ = self.encoder(images)  # (B, N, C)
        mem = self.mem_proj(regions)  # (B, N, D)
        ks, vs = zip(*(layer.cross_kv(mem) for layer in self.layers), strict=True)
        b, dh = images.shape[0], self.cfg.dim // self.cfg.heads
        cache = mem.new_zeros(b, self.cfg.layers, self.cfg.heads, self.cfg.max_len, dh)
        return {
            "cross_k": torch.stack(ks, 1),  # (B, L, H, N, dh)
            "cross_v": torch.stack(vs, 1),  # (B, L, H, N, dh)
            "self_k": cache,  # (B, L, H, T_max, dh)
            "self_v": cache.clone(),
            "pos": torch.zeros(b, dtype=torch.long, device=images.device),  # (B,)
        }

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """tokens (B,) -> logits (B, V), new state, cross-attention (B, N) (last layer,
        mean over heads)."""
        pos = state["pos"]  # (B,)
        t_max = self.cfg.max_len
        slots = torch.arange(t_max, device=tokens.device)[None, :]  # (1, T_max)
        write = (slots == pos[:, None])[:, None, :, None]  # (B, 1, T_max, 1)
        valid = (slots <= pos[:, None])[:, None, None, :]  # (B, 1, 1, T_max)
        x = self.drop(self.tok(tokens) + self.pos(pos)).unsqueeze(1)  # (B, 1, D)
        new_k, new_v = [], []
        attn = x.new_zeros(())
        scale = 1.0 / math.sqrt(self.cfg.dim // self.cfg.heads)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.ln1(x)).chunk(3, dim=-1)
            q, k, v = layer.heads_split(q), layer.heads_split(k), layer.heads_split(v)
            kc = torch.where(write, k, state["self_k"][:, i])  # (B, H, T_max, dh)
            vc = torch.where(write, v, state["self_v"][:, i])
            new_k.append(kc)
            new_v.append(vc)
            a = F.scaled_dot_product_attention(q, kc, vc, attn_mask=valid)  # (B, H, 1, dh)
            x = x + layer.drop(layer.proj(layer.heads_merge(a)))
            # cross-attention, weights computed explicitly so the step can return them
            qc = layer.heads_split(layer.q_cross(layer.ln2(x)))  # (B, H, 1, dh)
            w = torch.softmax(qc @ state["cross_k"][:, i].transpose(-1, -2) * scale, dim=-1)
            x = x + layer.drop(layer.proj_cross(layer.heads_merge(w @ state["cross_v"][:, i])))
            x = x + layer.drop(layer.mlp(layer.ln3(x)))
            attn = w.mean(1)[:, 0]  # (B, N)
        logits = self.head(self.ln_f(x))[:, 0]  # (B, V)
        new_state = {
            "cross_k": state["cross_k"],
            "cross_v": state["cross_v"],
            "self_k": torch.stack(new_k, 1),
            "self_v": torch.stack(new_v, 1),
            "pos": pos + 1,
        }
        return logits, new_state, attn

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing, all positions at once. tokens (M, T) -> logits (M, T, V) and the
        last layer's cross-attention (M, T, N)."""
        state = self.encode(images)
        ck, cv = state["cross_k"], state["cross_v"]
        if image_index is not None:
            ck, cv = ck.index_select(0, image_index), cv.index_select(0, image_index)
        t = tokens.shape[1]
        pos = torch.arange(t, device=tokens.device)
        x = self.drop(self.tok(tokens) + self.pos(pos)[None])  # (M, T, D)
        scale = 1.0 / math.sqrt(self.cfg.dim // self.cfg.heads)
        w = x.new_zeros(())
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.ln1(x)).chunk(3, dim=-1)
            q, k, v = layer.heads_split(q), layer.heads_split(k), layer.heads_split(v)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (M, H, T, dh)
            x = x + layer.drop(layer.proj(layer.heads_merge(a)))
            qc = layer.heads_split(layer.q_cross(layer.ln2(x)))  # (M, H, T, dh)
            if i == len(self.layers) - 1:
                w = torch.softmax(qc @ ck[:, i].transpose(-1, -2) * scale, dim=-1)
                c = w @ cv[:, i]
            else:
                c = F.scaled_dot_product_attention(qc, ck[:, i], cv[:, i])
            x = x + layer.drop(layer.proj_cross(layer.heads_merge(c)))
            x = x + layer.drop(layer.mlp(layer.ln3(x)))
        return self.head(self.ln_f(x)), w.mean(1)
