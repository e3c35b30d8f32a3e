"""The two graphs every Hugging Face captioner is cut into, whatever its family: an encoder
module (images -> empty self-attention caches + every layer's cross-attention K/V) and a step
module (tokens + that state -> logits, attention, the caches one token longer). The adapters
build the two modules; this names their inputs and outputs and declares the GraphSpecs.

State names, one per layer and per K/V (i = 0 .. L - 1):
  past_key_i / past_value_i      (B, H, T, D)  self-attention cache (T = 0 after the encoder)
  present_key_i / present_value_i (B, H, T + 1, D)  the step's updated cache
  cross_key_i / cross_value_i    (B, H, N, D)  cross-attention K/V over the N image positions
"""

from __future__ import annotations

import torch
from torch import nn

from ..onnx_export import GraphSpec

__all__ = ["cache_graphs", "split_heads", "state_names"]


def split_heads(x: torch.Tensor, h: int) -> torch.Tensor:
    """(B, S, C) -> (B, H, S, C / H): a projection's output as the heads' K or V."""
    b, s, c = x.shape
    return x.view(b, s, h, c // h).transpose(1, 2)


def state_names(n_layers: int) -> tuple[list[str], list[str], list[str]]:
    """(self-attention cache inputs, their outputs after a step, cross-attention K/V)."""
    past = [f"past_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")]
    present = [f"present_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")]
    cross = [f"cross_{kv}_{i}" for i in range(n_layers) for kv in ("key", "value")]
    return past, present, cross


def cache_graphs(
    encoder: nn.Module, step: nn.Module, n_layers: int, vocab: int, image_size: int
) -> tuple[list[GraphSpec], dict[str, str]]:
    """encoder.onnx and decoder_step.onnx, and the step's state updates (past_* ->
    present_*). The step's example inputs carry a cache of 3 tokens (the empty one of the first
    step is checked by the export's comparison with the Hugging Face model)."""
    past, present, cross = state_names(n_layers)
    encoder, step = encoder.eval(), step.eval()

    def enc_example(b: int) -> tuple[torch.Tensor, ...]:
        return (torch.randn(b, 3, image_size, image_size),)

    def step_example(b: int) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            state = list(encoder(*enc_example(b)))
            for _ in range(3):
                out = step(torch.randint(0, vocab, (b,)), *state)
                state[: len(past)] = out[2:]
        return (torch.randint(0, vocab, (b,)), *state)

    batch, cache = {0: "batch"}, {0: "batch", 2: "past"}
    graphs = [
        GraphSpec(
            "encoder.onnx",
            encoder,
            ["images"],
            [*past, *cross],
            {"images": batch},
            example=enc_example,
            notes="every layer's cross-attention K/V once per image; empty self-attention caches",
        ),
        GraphSpec(
            "decoder_step.onnx",
            step,
            ["tokens", *past, *cross],
            ["logits", "attention", *present],
            {"tokens": batch, **dict.fromkeys(past, cache), **dict.fromkeys(cross, batch)},
            example=step_example,
            notes="self-attention KV cache grows by one token a step; position = cache length",
        ),
    ]
    return graphs, dict(zip(past, present, strict=True))
