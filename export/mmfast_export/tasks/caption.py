"""Captioning: teacher-forced cross-entropy; validation loss, BLEU-4 and CIDEr-D; the test
split decoded greedily or with beam search (``--beam``), predictions written to the run."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from ..coco import CaptionData
from ..decoding import beam_search, greedy
from ..metrics import caption_scores
from ..models.captioner_lstm import LSTMCaptioner, LSTMCaptionerConfig
from ..models.captioner_transformer import TransformerCaptioner, TransformerCaptionerConfig
from ..models.encoder import EncoderConfig
from .base import Defaults, Task, TaskSetup
from .data import PAD_ID, caption_tokenizer, chunks, epoch_generator, pad

__all__ = ["CaptionTask"]

Captioner = LSTMCaptioner | TransformerCaptioner


class CaptionTask(Task[torch.Tensor, Captioner]):
    """A batch is a tensor of image indices (every caption of each image is a target)."""

    name = "caption"
    defaults = Defaults(epochs=3, batch_size=48, lr=2e-3)

    def __init__(self, setup: TaskSetup) -> None:
        super().__init__(setup)
        self.tok = caption_tokenizer(self.data["train"], setup.resume)
        self.train_ids = [
            [self.tok.encode(c) for c in caps] for caps in self.data["train"].captions
        ]
        self.val_ids = [[self.tok.encode(c) for c in caps] for caps in self.data["val"].captions]
        self.model = self._model(setup.resume)

    def _model(self, resume: Path | None) -> Captioner:
        """The resumed run's model, or a new one sized to the vocabulary and the captions."""
        if resume is not None:
            model = self.resumed_model(resume)
            assert isinstance(model, LSTMCaptioner | TransformerCaptioner)
            return model
        longest = max(len(s) for caps in self.train_ids for s in caps)
        enc = EncoderConfig(self.prep.size, tuple(self.args.widths))
        max_len = min(longest + 4, 64)
        if self.args.decoder == "lstm":
            return LSTMCaptioner(LSTMCaptionerConfig(len(self.tok), enc, max_len=max_len))
        if self.args.decoder == "transformer":
            return TransformerCaptioner(
                TransformerCaptionerConfig(len(self.tok), enc, max_len=max_len)
            )
        raise ValueError(f"--decoder must be lstm or transformer, got {self.args.decoder!r}")

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        g = epoch_generator(self.args.seed, epoch)
        perm = torch.randperm(len(self.train_ids), generator=g)
        return chunks(perm, self.batch_size)

    def _batch(
        self, data: CaptionData, ids: list[list[list[int]]], idx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images (B, 3, S, S), every caption of each as tokens (C, T) and its image (C,)."""
        seqs, img_index = [], []
        for k, i in enumerate(idx.tolist()):
            for s in ids[i]:
                seqs.append(s[: self.model.cfg.max_len + 1])
                img_index.append(k)
        tokens = pad(seqs)
        images = self.images(data.pixels[idx])
        return images, tokens, torch.tensor(img_index, dtype=torch.long)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        images, tokens, img_index = self._batch(self.data["train"], self.train_ids, batch)
        logits, _ = self.model(images, tokens[:, :-1], img_index)  # (C, T-1, V)
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=PAD_ID)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        n = min(len(self.val_ids), 500)
        total, count = 0.0, 0
        for idx in chunks(torch.arange(n), 100):
            images, tokens, img_index = self._batch(self.data["val"], self.val_ids, idx)
            logits, _ = self.model(images, tokens[:, :-1], img_index)
            tgt = tokens[:, 1:].flatten()
            total += float(
                F.cross_entropy(logits.flatten(0, 1), tgt, ignore_index=PAD_ID, reduction="sum")
            )
            count += int((tgt != PAD_ID).sum())
        hyps = self.decode(self.data["val"], limit=200)
        refs = {i: self.data["val"].captions[i] for i in hyps}
        sc = caption_scores(refs, hyps)
        return {"val_loss": total / count, "val_bleu4": sc["bleu4"], "val_cider": sc["cider"]}

    @torch.no_grad()
    def decode(self, data: CaptionData, limit: int | None = None) -> dict[int, str]:
        """Captions of the first ``limit`` images (all by default), by image index."""
        n = len(data.image_ids) if limit is None else min(limit, len(data.image_ids))
        out: dict[int, str] = {}
        max_len = self.model.cfg.max_len - 1
        for idx in chunks(torch.arange(n), 200):
            state = self.model.encode(self.images(data.pixels[idx]))
            if self.args.beam > 1:
                res = beam_search(
                    self.model, state, max_len, self.args.beam, self.args.length_penalty
                )
            else:
                res = greedy(self.model, state, max_len)
            for i, toks in zip(idx.tolist(), res.tokens, strict=True):
                out[i] = self.tok.decode(toks)
        return out

    def test(self, out: Path) -> dict[str, float]:
        hyps = self.decode(self.data["test"])
        refs = {i: self.data["test"].captions[i] for i in hyps}
        scores = caption_scores(refs, hyps)
        preds = [
            {"image_id": self.data["test"].image_ids[i], "caption": c} for i, c in hyps.items()
        ]
        (out / "predictions_test.json").write_text(json.dumps(preds, indent=1) + "\n")
        return {**scores, "num_images": float(len(hyps))}
