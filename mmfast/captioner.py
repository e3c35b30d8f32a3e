"""Image captioning over an exported bundle (ONNX Runtime, no torch).

    cap = mmfast.Captioner.load("bundle/")
    for c in cap.caption(["a.png", "b.png"], beam_size=3):
        print(c.text, c.score)

Per image, the encoder graph runs once and returns the decoder's whole initial state (for the
LSTM: h, c, the regions and their attention projection W_a·regions); each decoding step then
runs only the small step graph. Decoding (greedy / beam) mirrors the PyTorch reference token
for token (mmfast.decoding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ._pipeline import ImageLike, Pipeline
from .bundle import Bundle, Manifest
from .decoding import DecodeResult, State, beam_search, greedy

__all__ = ["Caption", "Captioner"]


@dataclass
class Caption:
    text: str
    tokens: list[int]
    score: float  # log-probability (beam: length-penalised)
    attention: np.ndarray | None = None  # (len + 1, regions) per generated token, if asked


class Captioner(Pipeline):
    """A captioning bundle loaded for inference. Thread-safe (sessions are)."""

    task = "caption"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(bundle, device, threads)
        m = bundle.manifest
        assert m.kind is not None and m.decoder is not None  # a caption bundle's: checked at load
        self.kind = m.kind
        # step-graph state input -> the output replacing it after each step (the rest, e.g.
        # the regions or the cross-attention K/V, stays as the encoder made it)
        self._state_io = list(m.decoder.state_updates.items())
        self.max_len = m.decoder.max_len
        self.special_tokens = m.special_tokens

    @classmethod
    def graph_files(cls, manifest: Manifest) -> list[str]:
        return ["encoder.onnx", "decoder_step.onnx"]

    def encode(self, pixels: np.ndarray) -> State:
        """(B, 3, S, S) float32 -> the decoder's initial state."""
        return self.run("encoder.onnx", {"images": pixels})

    def _step(self, tokens: np.ndarray, state: State) -> tuple[np.ndarray, State, np.ndarray]:
        feeds = {"tokens": tokens.astype(np.int64, copy=False), **state}
        outs = self.run("decoder_step.onnx", feeds)
        new = dict(state)
        for name_in, name_out in self._state_io:
            new[name_in] = outs[name_out]
        return outs["logits"], new, outs["attention"]

    def caption(
        self,
        images: Sequence[ImageLike] | ImageLike,
        *,
        beam_size: int = 1,
        max_len: int | None = None,
        length_penalty: float = 0.0,
        return_attention: bool = False,
        batch_size: int = 32,
    ) -> list[Caption]:
        """Caption images (paths, PIL images or (H, W, 3) uint8 arrays), in batches.

        max_len: tokens to generate at most (default 20, or the model's limit if lower).
        """
        if isinstance(images, (str, Path, Image.Image, np.ndarray)):
            images = [images]
        if len(images) == 0:
            raise ValueError("images: nothing to caption")
        if not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(f"beam_size: expected a positive int, got {beam_size!r}")
        if max_len is None:  # 20 tokens, or fewer if the model's KV cache is shorter
            max_len = min(20, self.max_len) if self.max_len else 20
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len: expected a positive int, got {max_len!r}")
        if self.kind == "caption_transformer" and self.max_len and max_len > self.max_len:
            # the KV cache has max_len slots (fixed at training): no room for longer captions
            raise ValueError(f"max_len: this model decodes at most {self.max_len} tokens")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        results: list[Caption] = []
        for start in range(0, len(images), batch_size):
            state = self.encode(self.pixels(images[start : start + batch_size]))
            r: DecodeResult
            if beam_size == 1 and length_penalty == 0.0:
                r = greedy(self._step, state, max_len, special_tokens=self.special_tokens)
            else:
                constant = frozenset(state) - {name for name, _ in self._state_io}
                r = beam_search(
                    self._step,
                    state,
                    max_len,
                    beam_size,
                    length_penalty,
                    constant=constant,
                    special_tokens=self.special_tokens,
                )
            for i, toks in enumerate(r.tokens):
                results.append(
                    Caption(
                        text=self.tokenizer.decode(toks),
                        tokens=toks,
                        score=float(r.scores[i]),
                        attention=r.attention[i] if return_attention else None,
                    )
                )
        return results

    def __repr__(self) -> str:
        device = self.sessions["encoder.onnx"].device
        return f"Captioner({self.bundle.path}, kind={self.kind}, device={device})"
