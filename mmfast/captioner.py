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
from dataclasses import dataclass, replace

import numpy as np

from . import generation as hf_generation
from ._checks import finite_float, one_line, positive_int
from ._pipeline import ImageLike, Pipeline, as_image_list
from .attention_map import RegionLayout, region_layout
from .bundle import Bundle, BundleMismatchError, Manifest
from .decoding import DecodeResult, State, beam_search, greedy

__all__ = ["MAX_BEAM_SIZE", "MAX_CAPTION_LEN", "MAX_LENGTH_PENALTY", "Caption", "Captioner"]

# Limits of caption()'s arguments. Beams multiply the decoder state (B x beam_size copies);
# max_len bounds the decoding loop of a model that never says <eos> (an LSTM has no length
# limit of its own); GNMT's length penalty ((5 + |Y|) / 6) ^ alpha stays finite in float32
# up to alpha = 10 at this length (the paper tunes alpha in [0, 1]).
MAX_BEAM_SIZE = 100
MAX_CAPTION_LEN = 512
MAX_LENGTH_PENALTY = 10.0


@dataclass
class Caption:
    text: str
    tokens: list[int]
    score: float  # log-probability (beam: length-penalised)
    attention: np.ndarray | None = None  # (len + 1, regions) per generated token, if asked
    # with the attention: each token's own text (the panel titles of mmfast.viz), and how the
    # attention's positions lie on the image (mmfast.attention_map)
    words: list[str] | None = None
    regions: RegionLayout | None = None


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
        # a Hugging Face captioner decodes as its generate() does, with its settings
        self.generation = m.generation

    @classmethod
    def graph_files(cls, manifest: Manifest) -> list[str]:
        return ["encoder.onnx", "decoder_step.onnx"]

    def check_bundle(self) -> None:
        # the encoder makes the whole state; the step takes it with the previous token and
        # gives the next token's logits, the attention and the state entries it updates
        decoder = self.bundle.manifest.decoder
        assert decoder is not None  # a caption bundle's: checked at load
        state = self.sessions["encoder.onnx"].output_names
        self.require_io("encoder.onnx", ["images"], [])
        unknown = [name for name in decoder.state_updates if name not in state]
        if unknown:
            raise BundleMismatchError(
                f"{self.bundle.path / 'manifest.json'}: decoder.state_updates names "
                f"{', '.join(unknown)}, which encoder.onnx does not make (it makes {state})"
            )
        outputs = ["logits", "attention", *decoder.state_updates.values()]
        self.require_io("decoder_step.onnx", ["tokens", *state], outputs)
        # a vocabulary shorter than the logits would turn the ids past its end into <unk>
        n = len(self.tokenizer)
        why = f"the vocabulary {self.bundle.manifest.vocab} has {n} tokens"
        if self.bundle.manifest.generation is None:
            self.require_dim("decoder_step.onnx", "logits", -1, n, why)
        else:  # a Hugging Face model's embedding table may be padded past its tokenizer
            v = self.fixed_dim("decoder_step.onnx", "logits", -1)
            if v is not None and v < n:
                raise BundleMismatchError(
                    f"{self.bundle.path / 'decoder_step.onnx'}: {v} logits, but {why}"
                )

    def encode(self, pixels: np.ndarray) -> State:
        """(B, 3, S, S) float32 -> the decoder's initial state."""
        s = self.preprocess_config.size
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
            raise ValueError(f"pixels: expected a float32 array, got {type(pixels).__name__}")
        if pixels.ndim != 4 or pixels.shape[1:] != (3, s, s) or len(pixels) == 0:
            raise ValueError(f"pixels: expected shape (B, 3, {s}, {s}), got {pixels.shape}")
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
        beam_size: int | None = None,
        max_new_tokens: int | None = None,
        max_len: int | None = None,
        length_penalty: float | None = None,
        return_attention: bool = False,
        batch_size: int = 32,
    ) -> list[Caption]:
        """Caption images (paths, PIL images or (H, W, 3) uint8 arrays), in batches.

        beam_size: 1 (greedy) to MAX_BEAM_SIZE. max_new_tokens (or its older name max_len):
        tokens to generate at most, up to MAX_CAPTION_LEN and the model's limit.
        length_penalty: the length normalisation of beam scores. Defaults: a Hugging Face
        model's generation config (num_beams, max_length - 1, length_penalty), decoded exactly
        as its ``generate()`` does (:mod:`mmfast.generation`); mmfast's own models: greedy,
        20 tokens, GNMT's alpha 0 (off) to MAX_LENGTH_PENALTY (:mod:`mmfast.decoding`).
        """
        images = as_image_list(images)
        if len(images) == 0:
            raise ValueError("images: nothing to caption")
        gen = self.generation
        if max_new_tokens is not None and max_len is not None and max_new_tokens != max_len:
            raise ValueError("max_new_tokens and max_len: give one (max_len is its old name)")
        name = "max_len" if max_len is not None else "max_new_tokens"
        new = max_new_tokens if max_new_tokens is not None else max_len
        if new is None:  # the model's setting, or 20 tokens; fewer if the model's limit is
            new = gen.max_length - 1 if gen is not None else 20
            new = min(new, self.max_len or MAX_CAPTION_LEN, MAX_CAPTION_LEN)
        new = positive_int(name, new, at_most=MAX_CAPTION_LEN)
        if (self.kind == "caption_transformer" or gen is not None) and self.max_len:
            if new > self.max_len:
                # the KV cache / position table has max_len slots: no room for longer captions
                raise ValueError(f"{name}: this model decodes at most {self.max_len} tokens")
        if beam_size is None:
            beam_size = gen.num_beams if gen is not None else 1
        beam_size = positive_int("beam_size", beam_size, at_most=MAX_BEAM_SIZE)
        if length_penalty is None:
            length_penalty = gen.length_penalty if gen is not None else 0.0
        # Hugging Face's exponent may be negative (favouring short captions); GNMT's may not
        lo = -MAX_LENGTH_PENALTY if gen is not None else 0.0
        length_penalty = finite_float(
            "length_penalty", length_penalty, lo=lo, hi=MAX_LENGTH_PENALTY
        )
        batch_size = positive_int("batch_size", batch_size)
        results: list[Caption] = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            try:
                results += self._caption_batch(
                    batch, start, beam_size, new, length_penalty, return_attention
                )
            except MemoryError as e:
                raise MemoryError(
                    f"out of memory captioning {len(batch)} images with beam_size={beam_size}: "
                    f"lower batch_size or beam_size ({one_line(e)})"
                ) from e
        return results

    def _caption_batch(
        self,
        images: Sequence[ImageLike],
        first: int,
        beam_size: int,
        max_len: int,
        length_penalty: float,
        return_attention: bool,
    ) -> list[Caption]:
        """Caption images[first : first + len(images)] of a caption() call."""
        state = self.encode(self.pixels(images, first))
        constant = frozenset(state) - {name for name, _ in self._state_io}
        r: DecodeResult
        if self.generation is not None:
            cfg = replace(self.generation, length_penalty=length_penalty)
            if beam_size == 1:
                r = hf_generation.greedy(self._step, state, cfg, max_len)
            else:
                r = hf_generation.beam_search(
                    self._step, state, cfg, max_len, beam_size, constant=constant
                )
        elif beam_size == 1 and length_penalty == 0.0:
            r = greedy(self._step, state, max_len, special_tokens=self.special_tokens)
        else:
            r = beam_search(
                self._step,
                state,
                max_len,
                beam_size,
                length_penalty,
                constant=constant,
                special_tokens=self.special_tokens,
            )
        layout = self._layout(r.attention[0].shape[-1]) if return_attention else None
        return [
            Caption(
                text=self.tokenizer.decode(toks),
                tokens=toks,
                score=float(r.scores[i]),
                attention=r.attention[i] if return_attention else None,
                words=[self.tokenizer.decode([t]) for t in toks] if return_attention else None,
                regions=layout,
            )
            for i, toks in enumerate(r.tokens)
        ]

    def _layout(self, positions: int) -> RegionLayout | None:
        """How the step's attention over `positions` lies on the image; None if it is not a
        square grid of regions (the attention is still returned, only not drawable)."""
        try:
            return region_layout(positions, self.preprocess_config)
        except ValueError:
            return None

    def __repr__(self) -> str:
        device = self.sessions["encoder.onnx"].device
        return f"Captioner({self.bundle.path}, kind={self.kind}, device={device})"
