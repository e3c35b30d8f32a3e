"""GPT-2 as a captioner's decoder (VisionEncoderDecoder): the cross-attention keys and values of
every layer, computed once per image, and one decoding step over a growing self-attention KV
cache.

The step restates ``GPT2Block.forward`` for one new token per sequence, on the model's own
modules and options (``scale_attn_weights``, ``scale_attn_by_inverse_layer_idx``). It is
written out rather than called through transformers' cache classes so that the exported graph
takes and returns the cache as plain tensors, one input and one output per layer and per K/V
(the runtime reorders them between beams; no stacking copy). The adapter checks it against
the Hugging Face model's logits.

The cross K/V module and the step take and give the state of :mod:`.graphs` (names, shapes);
the step's ``attention`` is the last layer's cross-attention averaged over heads, (B, N).
"""

from __future__ import annotations

import torch
from torch import nn

from .graphs import split_heads

__all__ = ["GPT2CrossKV", "GPT2Step", "check_gpt2_decoder"]


def check_gpt2_decoder(lm: nn.Module) -> None:
    """ValueError unless a GPT-2 LM head model can be a captioner's decoder here."""
    if not getattr(lm.config, "add_cross_attention", False):
        raise ValueError(
            "the GPT-2 decoder has no cross-attention (config.add_cross_attention is false): "
            "it cannot attend to the image"
        )


def _scaling(layer: int, config: object) -> float:
    """The attention logits' scale (transformers 5 keeps it as ``attn.scaling``, 4.x applies
    it inside its attention function)."""
    head_dim = config.hidden_size // config.num_attention_heads  # type: ignore[attr-defined]
    scale = float(head_dim) ** -0.5 if getattr(config, "scale_attn_weights", True) else 1.0
    if getattr(config, "scale_attn_by_inverse_layer_idx", False):
        scale /= float(layer + 1)
    return scale


class GPT2CrossKV(nn.Module):
    """Every layer's cross-attention keys and values from the encoder's states (B, N, C)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.blocks = lm.transformer.h
        self.n_head = lm.config.n_head
        self.embed_dim = lm.config.hidden_size

    def forward(self, enc: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for blk in self.blocks:
            k, v = blk.crossattention.c_attn(enc).split(self.embed_dim, dim=2)
            out += [split_heads(k, self.n_head), split_heads(v, self.n_head)]
        return out


class GPT2Step(nn.Module):
    """One token per sequence through GPT-2 with cross-attention; see the module docstring."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        t = lm.transformer
        self.wte, self.wpe, self.blocks, self.ln_f = t.wte, t.wpe, t.h, t.ln_f
        self.lm_head = lm.lm_head
        self.n_head = lm.config.n_head
        self.embed_dim = lm.config.hidden_size
        self.scales = [_scaling(i, lm.config) for i in range(len(self.blocks))]

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.blocks)
        past, cross = state[: 2 * n], state[2 * n :]
        b, c, h = tokens.shape[0], self.embed_dim, self.n_head
        d = c // h
        # every sequence has the same length (one start token, then one token a step), so the
        # position is the cache's length
        x = self.wte(tokens) + self.wpe.weight[past[0].shape[2]]  # (B, C)
        presents: list[torch.Tensor] = []
        probs = x.new_zeros(())
        for i, blk in enumerate(self.blocks):
            q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(c, dim=1)
            key = torch.cat([past[2 * i], k.view(b, h, 1, d)], dim=2)  # (B, H, T + 1, D)
            value = torch.cat([past[2 * i + 1], v.view(b, h, 1, d)], dim=2)
            presents += [key, value]
            # one query sees every cached token: no causal mask to apply
            s = (q.view(b, h, 1, d) @ key.transpose(2, 3)) * self.scales[i]
            a = (torch.softmax(s, dim=-1) @ value).reshape(b, c)
            x = x + blk.attn.c_proj(a)
            ca = blk.crossattention
            q = ca.q_attn(blk.ln_cross_attn(x)).view(b, h, 1, d)
            s = (q @ cross[2 * i].transpose(2, 3)) * self.scales[i]  # (B, H, 1, N)
            probs = torch.softmax(s, dim=-1)
            x = x + ca.c_proj((probs @ cross[2 * i + 1]).reshape(b, c))
            x = x + blk.mlp(blk.ln_2(x))
        logits = self.lm_head(self.ln_f(x))
        attention = probs.mean(dim=1)[:, 0]  # the last layer's, averaged over heads: (B, N)
        return (logits, attention, *presents)
