"""A BERT-style decoder (post-LayerNorm layers: self-attention, cross-attention, feed-forward)
as a captioner's decoder: the cross-attention keys and values of every layer, computed once per
image, and one decoding step over a growing self-attention KV cache.

It covers BLIP's text decoder (``BlipTextLMHeadModel``) and is written to cover BERT's
(``BertLMHeadModel`` with ``is_decoder`` and ``add_cross_attention``, e.g. a
VisionEncoderDecoder's decoder): both are ``lm.bert.embeddings`` (word + absolute position
embeddings, BERT adding token type 0's, then LayerNorm), ``lm.bert.encoder.layer[i]`` with the
same sub-modules (``attention.self.{query,key,value}``, ``attention.output``, ``crossattention``,
``intermediate``, ``output``) and ``lm.cls`` (dense, activation, LayerNorm, then the output
layer). The step restates ``BlipTextLayer.forward`` / ``BertLayer.forward`` for one new token per
sequence on the model's own modules, taking and returning the cache as plain tensors (one input
and one output per layer and per K/V; no transformers cache classes in the graph). The adapter
checks it against the Hugging Face model's logits.

Per layer (x the hidden state of the new token; LN(a + b) is the ``*.output`` modules' forward):
  x = LN(x + W_o softmax(q K^T / sqrt(D)) V)          self-attention over cache + new token
  x = LN(x + W_o softmax(q K_img^T / sqrt(D)) V_img)  cross-attention over the image
  x = LN(x + W_2 act(W_1 x))                          feed-forward

The cross K/V module and the step take and give the state of :mod:`.graphs` (names, shapes);
the step's ``attention`` is the last layer's cross-attention averaged over heads, (B, N).
With ``cross_bias`` the step takes one more state entry after the cross K/V, an additive mask
(B, N) on the cross-attention scores (0 attended, a large negative number not): BLIP VQA's
answer decoder attends to questions of several lengths padded into one batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .graphs import split_heads

__all__ = ["BertCrossKV", "BertStep", "check_bert_decoder"]


def check_bert_decoder(lm: nn.Module) -> None:
    """ValueError unless a BERT-style LM head model (``lm.bert``, ``lm.cls``) can be a
    captioner's decoder here: every layer has cross-attention, positions are absolute."""
    layers = lm.bert.encoder.layer
    if not all(hasattr(layer, "crossattention") for layer in layers):
        raise ValueError(
            "the BERT-style decoder has no cross-attention (config.is_decoder / "
            "add_cross_attention is false): it cannot attend to the image"
        )
    # transformers 4.x also builds relative position scores into the attention
    # (position_embedding_type "relative_key" / "relative_key_query"); the step does not
    kinds = {
        getattr(m, "position_embedding_type", "absolute")
        for m in (lm.bert.embeddings, *(layer.attention.self for layer in layers))
    }
    if kinds != {"absolute"}:
        raise ValueError(
            f"the BERT-style decoder uses position_embedding_type {sorted(kinds)}: only "
            "'absolute' is supported"
        )


class BertCrossKV(nn.Module):
    """Every layer's cross-attention keys and values from the encoder's states (B, N, C_enc)."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.layers = lm.bert.encoder.layer
        self.n_head = lm.config.num_attention_heads

    def forward(self, enc: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for layer in self.layers:
            att = layer.crossattention.self
            out += [
                split_heads(att.key(enc), self.n_head),
                split_heads(att.value(enc), self.n_head),
            ]
        return out


class BertStep(nn.Module):
    """One token per sequence through the BERT-style decoder; see the module docstring."""

    def __init__(self, lm: nn.Module, cross_bias: bool = False) -> None:
        super().__init__()
        self.cross_bias = cross_bias  # the last state entry is a (B, N) additive mask
        emb = lm.bert.embeddings
        self.word, self.position, self.ln_emb = (
            emb.word_embeddings,
            emb.position_embeddings,
            emb.LayerNorm,
        )
        # BERT adds token type 0's embedding (no token_type_ids given); BLIP has none
        self.token_type = getattr(emb, "token_type_embeddings", None)
        self.layers = lm.bert.encoder.layer
        self.head = lm.cls
        self.n_head = lm.config.num_attention_heads
        self.embed_dim = lm.config.hidden_size

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.layers)
        past, cross = state[: 2 * n], state[2 * n : 4 * n]
        # (B, 1, 1, N) added to every head's scores; None: every position attended
        bias = state[4 * n][:, None, None, :] if self.cross_bias else None
        b, c, h = tokens.shape[0], self.embed_dim, self.n_head
        d = c // h
        scale = math.sqrt(d)  # BLIP (and BERT 4.x) divide the scores by sqrt(D)
        # every sequence has the same length (one start token, then one token a step), so the
        # position is the cache's length
        x = self.word(tokens)  # (B, C)
        if self.token_type is not None:
            x = x + self.token_type.weight[0]
        x = self.ln_emb(x + self.position.weight[past[0].shape[2]])
        presents: list[torch.Tensor] = []
        probs = x.new_zeros(())
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            q = sa.query(x).view(b, h, 1, d)
            key = torch.cat([past[2 * i], sa.key(x).view(b, h, 1, d)], dim=2)  # (B, H, T + 1, D)
            value = torch.cat([past[2 * i + 1], sa.value(x).view(b, h, 1, d)], dim=2)
            presents += [key, value]
            # one query sees every cached token: no causal mask to apply
            s = (q @ key.transpose(2, 3)) / scale  # (B, H, 1, T + 1)
            a = (torch.softmax(s, dim=-1) @ value).reshape(b, c)
            x = layer.attention.output(a, x)  # LN(x + W_o a)
            ca = layer.crossattention
            q = ca.self.query(x).view(b, h, 1, d)
            s = (q @ cross[2 * i].transpose(2, 3)) / scale  # (B, H, 1, N); the image mask is 1s
            if bias is not None:
                s = s + bias
            probs = torch.softmax(s, dim=-1)
            x = ca.output((probs @ cross[2 * i + 1]).reshape(b, c), x)
            x = layer.output(layer.intermediate(x), x)  # LN(x + W_2 act(W_1 x))
        logits = self.head(x)  # (B, V)
        attention = probs.mean(dim=1)[:, 0]  # the last layer's, averaged over heads: (B, N)
        return (logits, attention, *presents)
