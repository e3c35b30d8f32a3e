"""Text -> image retrieval: symmetric InfoNCE over the batch plus the re-ranker's loss on hard
negatives; Recall@K on the val split, and on the test split with the top-k re-ranked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..coco import CaptionData
from ..metrics import recall_at_k
from ..models.encoder import EncoderConfig
from ..models.retriever import Retriever, RetrieverConfig
from .base import Defaults, Task, TaskSetup
from .data import caption_tokenizer, chunks, epoch_generator, pad

__all__ = ["RetrievalTask"]

# image indices (B,), and per image the captions it is paired with (its first, one other)
RetrievalBatch = tuple[torch.Tensor, list[list[int]]]


class RetrievalTask(Task[RetrievalBatch, Retriever]):
    name = "retrieval"
    defaults = Defaults(epochs=6, batch_size=128, lr=1.5e-3)

    def __init__(self, setup: TaskSetup) -> None:
        super().__init__(setup)
        self.tok = caption_tokenizer(self.data["train"], setup.resume)
        self.train_ids = [
            [self.tok.encode(c) for c in caps] for caps in self.data["train"].captions
        ]
        self.model = self._model(setup.resume)

    def _model(self, resume: Path | None) -> Retriever:
        """The resumed run's model, or a new one sized to the vocabulary and the captions."""
        if resume is not None:
            model = self.resumed_model(resume)
            assert isinstance(model, Retriever)
            return model
        longest = max(len(ids) for caps in self.train_ids for ids in caps)
        enc = EncoderConfig(self.prep.size, tuple(self.args.widths))
        return Retriever(RetrieverConfig(len(self.tok), enc, max_len=min(longest, 64)))

    def epoch_batches(self, epoch: int) -> list[RetrievalBatch]:
        """Each image with two of its captions (two text queries per encoder pass)."""
        g = epoch_generator(self.args.seed, epoch)
        perm = torch.randperm(len(self.train_ids), generator=g)
        # the first caption (for the shapes data: the full description, the test query) and
        # one other, at random
        pick = [
            [0, *(1 + torch.randperm(len(self.train_ids[i]) - 1, generator=g)[:1]).tolist()]
            for i in perm.tolist()
        ]
        bs = self.batch_size
        return [
            (perm[i : i + bs], pick[i : i + bs])
            for i in range(0, len(perm), bs)
            if len(perm[i : i + bs]) > 1
        ]

    def loss(self, batch: RetrievalBatch) -> torch.Tensor:
        idx, pick = batch
        m = self.model
        b = len(idx)
        first = [self.train_ids[i][p[0]] for i, p in zip(idx.tolist(), pick, strict=True)]
        extra = [
            (k, self.train_ids[i][p[1]])
            for k, (i, p) in enumerate(zip(idx.tolist(), pick, strict=True))
            if len(p) > 1
        ]
        tokens = pad(first + [t for _, t in extra])[:, : m.cfg.max_len]  # (B + E, T)
        txt_img = torch.tensor(list(range(b)) + [k for k, _ in extra], dtype=torch.long)
        img, regions = m.encode_image(self.images(self.data["train"].pixels[idx]))  # (B, E)
        txt, feats, mask = m.encode_text(tokens)  # (B + E, E)
        scale = m.temperature_scale()
        # InfoNCE: every text against the batch's images; each image against its first texts
        logits = scale * txt @ img.t()  # (B + E, B)
        loss = 0.5 * (
            F.cross_entropy(logits, txt_img)
            + F.cross_entropy(logits[:b].t(), torch.arange(b, dtype=torch.long))
        )
        if m.reranker is not None:
            r = min(4, b)
            with torch.no_grad():
                sim = logits[:b].detach().clone()  # (B, B)
                sim.fill_diagonal_(float("-inf"))
                neg = sim.topk(r - 1, dim=-1).indices  # (B, r-1) hardest negatives
            cand = torch.cat([torch.arange(b)[:, None], neg], 1)  # (B, r), positive first
            s = m.rerank(
                feats[:b].repeat_interleave(r, 0),
                mask[:b].repeat_interleave(r, 0),
                regions[cand.flatten()],
            ).view(b, r)
            loss = loss + F.cross_entropy(s, torch.zeros(b, dtype=torch.long))
        return loss

    @torch.no_grad()
    def embed(self, data: CaptionData, all_captions: bool) -> dict[str, Any]:
        """Image embeddings and regions, and the queries' (every caption, or each image's
        first) embeddings, token features and masks, with each query's target image."""
        m = self.model
        imgs, regs = [], []
        for idx in chunks(torch.arange(len(data.image_ids)), 250):
            e, r = m.encode_image(self.images(data.pixels[idx]))
            imgs.append(e)
            regs.append(r)
        texts, target = [], []
        for i, caps in enumerate(data.captions):
            for c in caps if all_captions else caps[:1]:
                texts.append(self.tok.encode(c))
                target.append(i)
        tok = pad(texts)[:, : m.cfg.max_len]
        txts, feats, masks = [], [], []
        for idx in chunks(torch.arange(len(texts)), 500):
            t, f, mk = m.encode_text(tok[idx])
            txts.append(t)
            feats.append(f)
            masks.append(mk)
        return {
            "img": torch.cat(imgs),
            "regions": torch.cat(regs),
            "txt": torch.cat(txts),
            "feats": torch.cat(feats),
            "mask": torch.cat(masks),
            "target": torch.tensor(target, dtype=torch.long),
        }

    @torch.no_grad()
    def rerank_scores(self, e: dict[str, Any], sim: torch.Tensor, k: int) -> torch.Tensor:
        """Re-score each query's top-k images: the dual encoder's logit plus the cross-attention
        re-ranker's score. The top-k go first, in that order; the rest keep their order."""
        m = self.model
        q = sim.shape[0]
        k = min(k, sim.shape[1])
        top = sim.topk(k, dim=-1).indices  # (Q, k)
        out = sim.clone()
        scale = m.temperature_scale()
        for idx in chunks(torch.arange(q), 100):
            cand = top[idx]  # (q, k)
            s = m.rerank(
                e["feats"][idx].repeat_interleave(k, 0),
                e["mask"][idx].repeat_interleave(k, 0),
                e["regions"][cand.flatten()],
            ).view(len(idx), k)
            fused = scale * sim[idx[:, None], cand] + s  # (q, k)
            out[idx[:, None], cand] = 1e4 + fused  # above every cosine similarity
        return out

    def _recall(self, data: CaptionData, all_captions: bool, rerank: bool) -> dict[str, float]:
        e = self.embed(data, all_captions)
        sim = e["txt"] @ e["img"].t()  # (Q, I)
        res = recall_at_k(sim, e["target"], (1, 5, 10))
        if rerank and self.model.reranker is not None:
            rr = recall_at_k(
                self.rerank_scores(e, sim, self.args.rerank_k), e["target"], (1, 5, 10)
            )
            res.update({f"rerank_{k}": v for k, v in rr.items()})
        return res

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        r = self._recall(self.data["val"], all_captions=False, rerank=False)
        return {f"val_{k}": v for k, v in r.items()}

    @torch.no_grad()
    def test(self, out: Path) -> dict[str, float]:
        first = self._recall(self.data["test"], all_captions=False, rerank=True)
        every = self._recall(self.data["test"], all_captions=True, rerank=False)
        res = dict(first)
        res.update({f"allcaps_{k}": v for k, v in every.items()})
        res["num_images"] = float(len(self.data["test"].image_ids))
        res["temperature"] = float(1.0 / self.model.temperature_scale())
        return res
