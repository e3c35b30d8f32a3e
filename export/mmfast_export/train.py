"""Training for the three tasks: captioning, retrieval, VQA.

CPU-friendly and reproducible: one seed fixes the initial weights, each epoch's order (a
generator seeded with ``(seed, epoch)``) and dropout (the torch RNG, saved with every
checkpoint). A checkpoint is written after every epoch; ``resume`` continues from the last one
and gives the same weights as an uninterrupted run. An evaluation on the test split ends the run.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mmfast.preprocess import PreprocessConfig
from mmfast.tokenizer import Tokenizer

from .captioner_lstm import LSTMCaptioner, LSTMCaptionerConfig
from .captioner_transformer import TransformerCaptioner, TransformerCaptionerConfig
from .checkpoint import (
    config_from_dict,
    config_to_dict,
    load_optimizer,
    load_rng,
    load_weights,
    save_optimizer,
    save_rng,
    save_weights,
)
from .coco import CaptionData, SplitFiles, VqaData, load_captions, load_vqa, resolve_splits
from .decoding import beam_search, greedy
from .encoder import EncoderConfig
from .metrics import caption_scores, recall_at_k, vqa_accuracy
from .retriever import Retriever, RetrieverConfig
from .transforms import preprocess_tensor
from .vqa import VQAConfig, VQAModel

__all__ = ["TASK_DEFAULTS", "TrainArgs", "build_model", "load_run", "train"]

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # sized to train in well under 10 minutes on 2 CPU cores with the default dataset
    "caption": {"epochs": 3, "batch_size": 48, "lr": 2e-3},
    "retrieval": {"epochs": 6, "batch_size": 128, "lr": 1.5e-3},
    "vqa": {"epochs": 5, "batch_size": 32, "lr": 2e-3},
}


@dataclass
class TrainArgs:
    task: str
    data: str
    out: str
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    warmup: float = 0.05  # fraction of the steps with a linear warm-up
    seed: int = 0
    decoder: str = "lstm"
    threads: int = 2
    image_size: int | None = None  # default: the generated dataset's size, else 64
    widths: tuple[int, ...] = (32, 64, 128)
    limit_train: int | None = None
    limit_eval: int | None = None
    beam: int = 1
    length_penalty: float = 0.0
    rerank_k: int = 10
    resume: bool = False
    stop_after: int | None = None  # stop after this epoch (the schedule still spans `epochs`)
    progress: bool = True
    train_json: str | None = None
    val_json: str | None = None
    test_json: str | None = None
    images: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolved(self) -> TrainArgs:
        d = TASK_DEFAULTS[self.task]
        return TrainArgs(
            **{
                **asdict(self),
                "epochs": self.epochs if self.epochs is not None else d["epochs"],
                "batch_size": self.batch_size if self.batch_size is not None else d["batch_size"],
                "lr": self.lr if self.lr is not None else d["lr"],
                "widths": tuple(self.widths),
            }
        )


def _pad(seqs: list[list[int]], length: int | None = None) -> torch.Tensor:
    t = length or max(len(s) for s in seqs)
    out = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:t]
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _chunks(idx: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100003 + epoch)


def build_model(task: str, model_cfg: dict[str, Any]) -> nn.Module:
    """Model from its JSON config (``config.json`` -> ``model``)."""
    kind = model_cfg["kind"]
    params = {k: v for k, v in model_cfg.items() if k != "kind"}
    if kind == "caption_lstm":
        return LSTMCaptioner(config_from_dict(LSTMCaptionerConfig, params))
    if kind == "caption_transformer":
        return TransformerCaptioner(config_from_dict(TransformerCaptionerConfig, params))
    if kind == "retrieval":
        return Retriever(config_from_dict(RetrieverConfig, params))
    if kind == "vqa":
        return VQAModel(config_from_dict(VQAConfig, params))
    raise ValueError(f"unknown model kind {kind!r} (task {task})")


def load_run(run_dir: str | Path) -> tuple[nn.Module, dict[str, Any], Tokenizer]:
    """A trained model (eval mode), its config.json and its tokenizer."""
    d = Path(run_dir)
    cfg = json.loads((d / "config.json").read_text())
    model = build_model(cfg["task"], cfg["model"])
    load_weights(model, d / "model.safetensors")
    model.eval()
    return model, cfg, Tokenizer.load(d / "vocab.txt")


# --------------------------------------------------------------------------------- tasks


class Task:
    """What differs between tasks: data, model, one batch's loss, evaluation."""

    name = ""
    model: nn.Module

    def __init__(self, args: TrainArgs, splits: dict[str, SplitFiles], prep: PreprocessConfig):
        self.args = args
        self.prep = prep
        self.splits = splits

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        # channels-last: oneDNN's convolutions run about twice as fast on CPU in this layout
        x = preprocess_tensor(pixels, self.prep)
        return x.contiguous(memory_format=torch.channels_last)

    def epoch_batches(self, epoch: int) -> list[Any]:
        raise NotImplementedError

    def loss(self, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def test(self, out: Path) -> dict[str, float]:
        raise NotImplementedError

    def model_config(self) -> dict[str, Any]:
        cfg = getattr(self.model, "cfg")  # noqa: B009
        return {"kind": getattr(self.model, "kind"), **config_to_dict(cfg)}  # noqa: B009

    def save_vocab(self, out: Path) -> None:
        self.tok.save(out / "vocab.txt")

    tok: Tokenizer


class CaptionTask(Task):
    name = "caption"

    def __init__(self, args, splits, prep, saved: dict[str, Any] | None, out: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(args, splits, prep)
        self.train_data = load_captions(splits["train"], prep, args.limit_train)
        self.val_data = load_captions(splits["val"], prep, args.limit_eval)
        self.test_data = load_captions(splits["test"], prep, args.limit_eval)
        if saved is not None:
            self.tok = Tokenizer.load(out / "vocab.txt")
        else:
            self.tok = Tokenizer.build(c for caps in self.train_data.captions for c in caps)
        self.train_ids = [[self.tok.encode(c) for c in caps] for caps in self.train_data.captions]
        self.val_ids = [[self.tok.encode(c) for c in caps] for caps in self.val_data.captions]
        if saved is not None:
            self.model = build_model("caption", saved["model"])
        else:
            longest = max(len(s) for caps in self.train_ids for s in caps)
            enc = EncoderConfig(prep.size, tuple(args.widths))
            max_len = min(longest + 4, 64)
            if args.decoder == "lstm":
                self.model = LSTMCaptioner(LSTMCaptionerConfig(len(self.tok), enc, max_len=max_len))
            elif args.decoder == "transformer":
                self.model = TransformerCaptioner(
                    TransformerCaptionerConfig(len(self.tok), enc, max_len=max_len)
                )
            else:
                raise ValueError(f"--decoder must be lstm or transformer, got {args.decoder!r}")

    def epoch_batches(self, epoch: int) -> list[Any]:
        g = _epoch_generator(self.args.seed, epoch)
        perm = torch.randperm(len(self.train_ids), generator=g)
        assert self.args.batch_size is not None
        return _chunks(perm, self.args.batch_size)

    def _batch(self, data: CaptionData, ids: list[list[list[int]]], idx: torch.Tensor) -> Any:
        seqs, img_index = [], []
        for k, i in enumerate(idx.tolist()):
            for s in ids[i]:
                seqs.append(s[: self.model.cfg.max_len + 1])
                img_index.append(k)
        tokens = _pad(seqs)
        images = self.images(data.pixels[idx])
        return images, tokens, torch.tensor(img_index, dtype=torch.long)

    def loss(self, batch: Any) -> torch.Tensor:
        images, tokens, img_index = self._batch(self.train_data, self.train_ids, batch)
        logits, _ = self.model(images, tokens[:, :-1], img_index)
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=0)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        n = min(len(self.val_ids), 500)
        total, count = 0.0, 0
        for idx in _chunks(torch.arange(n), 100):
            images, tokens, img_index = self._batch(self.val_data, self.val_ids, idx)
            logits, _ = self.model(images, tokens[:, :-1], img_index)
            tgt = tokens[:, 1:].flatten()
            total += float(
                F.cross_entropy(logits.flatten(0, 1), tgt, ignore_index=0, reduction="sum")
            )
            count += int((tgt != 0).sum())
        hyps = self.decode(self.val_data, limit=200)
        refs = {i: self.val_data.captions[i] for i in hyps}
        sc = caption_scores(refs, hyps)
        return {"val_loss": total / count, "val_bleu4": sc["bleu4"], "val_cider": sc["cider"]}

    @torch.no_grad()
    def decode(self, data: CaptionData, limit: int | None = None) -> dict[int, str]:
        n = len(data.image_ids) if limit is None else min(limit, len(data.image_ids))
        out: dict[int, str] = {}
        max_len = self.model.cfg.max_len - 1
        for idx in _chunks(torch.arange(n), 200):
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
        hyps = self.decode(self.test_data)
        refs = {i: self.test_data.captions[i] for i in hyps}
        scores = caption_scores(refs, hyps)
        preds = [{"image_id": self.test_data.image_ids[i], "caption": c} for i, c in hyps.items()]
        (out / "predictions_test.json").write_text(json.dumps(preds, indent=1) + "\n")
        return {**scores, "num_images": float(len(hyps))}


class RetrievalTask(Task):
    name = "retrieval"

    def __init__(self, args, splits, prep, saved: dict[str, Any] | None, out: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(args, splits, prep)
        self.train_data = load_captions(splits["train"], prep, args.limit_train)
        self.val_data = load_captions(splits["val"], prep, args.limit_eval)
        self.test_data = load_captions(splits["test"], prep, args.limit_eval)
        if saved is not None:
            self.tok = Tokenizer.load(out / "vocab.txt")
            self.model = build_model("retrieval", saved["model"])
        else:
            self.tok = Tokenizer.build(c for caps in self.train_data.captions for c in caps)
            longest = max(
                len(self.tok.encode(c)) for caps in self.train_data.captions for c in caps
            )
            enc = EncoderConfig(prep.size, tuple(args.widths))
            self.model = Retriever(RetrieverConfig(len(self.tok), enc, max_len=min(longest, 64)))
        self.train_ids = [[self.tok.encode(c) for c in caps] for caps in self.train_data.captions]

    def epoch_batches(self, epoch: int) -> list[Any]:
        """Each image with two of its captions (two text queries per encoder pass)."""
        g = _epoch_generator(self.args.seed, epoch)
        perm = torch.randperm(len(self.train_ids), generator=g)
        # the first caption (for the shapes data: the full description, the test query) and
        # one other, at random
        pick = [
            [0, *(1 + torch.randperm(len(self.train_ids[i]) - 1, generator=g)[:1]).tolist()]
            for i in perm.tolist()
        ]
        assert self.args.batch_size is not None
        bs = self.args.batch_size
        return [
            (perm[i : i + bs], pick[i : i + bs])
            for i in range(0, len(perm), bs)
            if len(perm[i : i + bs]) > 1
        ]

    def loss(self, batch: Any) -> torch.Tensor:
        idx, pick = batch
        m: Retriever = self.model  # type: ignore[assignment]
        b = len(idx)
        first = [self.train_ids[i][p[0]] for i, p in zip(idx.tolist(), pick, strict=True)]
        extra = [
            (k, self.train_ids[i][p[1]])
            for k, (i, p) in enumerate(zip(idx.tolist(), pick, strict=True))
            if len(p) > 1
        ]
        tokens = _pad(first + [t for _, t in extra])[:, : m.cfg.max_len]  # (B + E, T)
        txt_img = torch.tensor(list(range(b)) + [k for k, _ in extra], dtype=torch.long)
        img, regions = m.encode_image(self.images(self.train_data.pixels[idx]))  # (B, E)
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
        m: Retriever = self.model  # type: ignore[assignment]
        imgs, regs = [], []
        for idx in _chunks(torch.arange(len(data.image_ids)), 250):
            e, r = m.encode_image(self.images(data.pixels[idx]))
            imgs.append(e)
            regs.append(r)
        texts, target = [], []
        for i, caps in enumerate(data.captions):
            for c in caps if all_captions else caps[:1]:
                texts.append(self.tok.encode(c))
                target.append(i)
        tok = _pad(texts)[:, : m.cfg.max_len]
        txts, feats, masks = [], [], []
        for idx in _chunks(torch.arange(len(texts)), 500):
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
        m: Retriever = self.model  # type: ignore[assignment]
        q = sim.shape[0]
        k = min(k, sim.shape[1])
        top = sim.topk(k, dim=-1).indices  # (Q, k)
        out = sim.clone()
        scale = m.temperature_scale()
        for idx in _chunks(torch.arange(q), 100):
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
        m: Retriever = self.model  # type: ignore[assignment]
        if rerank and m.reranker is not None:
            rr = recall_at_k(
                self.rerank_scores(e, sim, self.args.rerank_k), e["target"], (1, 5, 10)
            )
            res.update({f"rerank_{k}": v for k, v in rr.items()})
        return res

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        r = self._recall(self.val_data, all_captions=False, rerank=False)
        return {f"val_{k}": v for k, v in r.items()}

    @torch.no_grad()
    def test(self, out: Path) -> dict[str, float]:
        first = self._recall(self.test_data, all_captions=False, rerank=True)
        every = self._recall(self.test_data, all_captions=True, rerank=False)
        res = dict(first)
        res.update({f"allcaps_{k}": v for k, v in every.items()})
        res["num_images"] = float(len(self.test_data.image_ids))
        res["temperature"] = float(1.0 / self.model.temperature_scale())  # type: ignore[operator]
        return res


class VQATask(Task):
    name = "vqa"

    def __init__(self, args, splits, prep, saved: dict[str, Any] | None, out: Path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(args, splits, prep)
        for s in ("train", "val", "test"):
            if splits[s].vqa_json is None:
                raise FileNotFoundError(f"VQA needs vqa_{s}.json next to the captions files")
        self.data = {
            "train": load_captions(splits["train"], prep, args.limit_train),
            "val": load_captions(splits["val"], prep, args.limit_eval),
            "test": load_captions(splits["test"], prep, args.limit_eval),
        }
        self.qa: dict[str, VqaData] = {
            s: load_vqa(splits[s].vqa_json, d)  # type: ignore[arg-type]
            for s, d in self.data.items()
        }
        if saved is not None:
            self.tok = Tokenizer.load(out / "vocab.txt")
            self.answers = (out / "answers.txt").read_text().splitlines()
            self.model = build_model("vqa", saved["model"])
        else:
            self.tok = Tokenizer.build(self.qa["train"].questions)
            self.answers = sorted(set(self.qa["train"].answers))
            longest = max(len(self.tok.encode(q)) for q in self.qa["train"].questions)
            enc = EncoderConfig(prep.size, tuple(args.widths))
            self.model = VQAModel(
                VQAConfig(len(self.tok), len(self.answers), enc, max_len=min(longest + 4, 64))
            )
        self.ans_index = {a: i for i, a in enumerate(self.answers)}
        self.q_ids = {s: [self.tok.encode(q) for q in v.questions] for s, v in self.qa.items()}
        self.by_image: list[list[int]] = [[] for _ in self.data["train"].image_ids]
        for qi, k in enumerate(self.qa["train"].image_index):
            self.by_image[k].append(qi)

    def save_vocab(self, out: Path) -> None:
        super().save_vocab(out)
        (out / "answers.txt").write_text("\n".join(self.answers) + "\n")

    def epoch_batches(self, epoch: int) -> list[Any]:
        g = _epoch_generator(self.args.seed, epoch)
        have = torch.tensor([i for i, q in enumerate(self.by_image) if q], dtype=torch.long)
        perm = have[torch.randperm(len(have), generator=g)]
        assert self.args.batch_size is not None
        return _chunks(perm, self.args.batch_size)

    def _forward(self, split: str, img_idx: torch.Tensor, q_idx: list[int]) -> torch.Tensor:
        m: VQAModel = self.model  # type: ignore[assignment]
        pos = {i: k for k, i in enumerate(img_idx.tolist())}
        image_index = torch.tensor([pos[self.qa[split].image_index[q]] for q in q_idx])
        questions = _pad([self.q_ids[split][q] for q in q_idx])[:, : m.cfg.max_len]
        logits, _ = m(self.images(self.data[split].pixels[img_idx]), questions, image_index)
        return logits

    def loss(self, batch: Any) -> torch.Tensor:
        q_idx = [q for i in batch.tolist() for q in self.by_image[i]]
        logits = self._forward("train", batch, q_idx)
        target = torch.tensor([self.ans_index[self.qa["train"].answers[q]] for q in q_idx])
        return F.cross_entropy(logits, target)

    @torch.no_grad()
    def _accuracy(self, split: str, max_images: int | None = None) -> dict[str, float]:
        qa = self.qa[split]
        n = len(self.data[split].image_ids)
        by_image: list[list[int]] = [
            [] for _ in range(n if max_images is None else min(n, max_images))
        ]
        for qi, k in enumerate(qa.image_index):
            if k < len(by_image):
                by_image[k].append(qi)
        preds: dict[int, str] = {}
        for idx in _chunks(torch.arange(len(by_image)), 250):
            q_idx = [q for i in idx.tolist() for q in by_image[i]]
            if not q_idx:
                continue
            best = self._forward(split, idx, q_idx).argmax(-1).tolist()
            for q, a in zip(q_idx, best, strict=True):
                preds[q] = self.answers[a]
        order = sorted(preds)
        return vqa_accuracy(
            [preds[q] for q in order], [qa.answers[q] for q in order], [qa.types[q] for q in order]
        )

    def validate(self) -> dict[str, float]:
        return {"val_accuracy": self._accuracy("val", max_images=500)["accuracy"]}

    def test(self, out: Path) -> dict[str, float]:
        res = self._accuracy("test")
        res["num_questions"] = float(len(self.qa["test"].questions))
        return res


TASKS: dict[str, type[Task]] = {"caption": CaptionTask, "retrieval": RetrievalTask, "vqa": VQATask}


# ---------------------------------------------------------------------------------- loop


def _lr_at(step: int, total: int, base: float, warmup: float) -> float:
    """Linear warm-up, then cosine decay to 2% of the base rate."""
    w = max(1, int(total * warmup))
    if step < w:
        return base * (step + 1) / w
    p = min(1.0, (step - w) / max(1, total - w))
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * p)))


def _optimizer(model: nn.Module, lr: float, wd: float) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "pos" not in name.split(".")[-1] else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
    )


def _default_image_size(data: str) -> int:
    meta = Path(data) / "dataset.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["config"]["size"])
    return 64


def train(args: TrainArgs) -> dict[str, Any]:
    """Train (or resume), checkpoint each epoch, evaluate on the test split. Returns the summary
    also written to ``OUT/metrics.json``."""
    if args.task not in TASKS:
        raise ValueError(f"unknown task {args.task!r}; choose one of {sorted(TASKS)}")
    args = args.resolved()
    assert args.epochs is not None and args.lr is not None
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved: dict[str, Any] | None = None
    if args.resume and (out / "config.json").is_file():
        saved = json.loads((out / "config.json").read_text())
        if saved["task"] != args.task:
            raise ValueError(f"{out} holds a {saved['task']} run, not {args.task}")
    prep = (
        PreprocessConfig.from_dict(saved["preprocess"])
        if saved is not None
        else PreprocessConfig(size=args.image_size or _default_image_size(args.data))
    )
    splits = resolve_splits(args.data, args.train_json, args.val_json, args.test_json, args.images)

    torch.manual_seed(args.seed)
    t_load = time.perf_counter()
    task = TASKS[args.task](args, splits, prep, saved, out)  # type: ignore[call-arg]
    load_s = time.perf_counter() - t_load
    model = task.model.to(memory_format=torch.channels_last)  # conv weights only
    opt = _optimizer(model, args.lr, args.weight_decay)
    history: list[dict[str, Any]] = []
    start = 0
    train_s = 0.0
    if saved is not None:
        load_weights(model, out / "model.safetensors")
        load_optimizer(opt, out / "optimizer.safetensors")
        load_rng(out / "rng.safetensors")
        start = int(saved["progress"]["epochs_done"])
        history = list(saved["progress"]["history"])
        train_s = float(saved["progress"]["train_seconds"])
    n_params = sum(p.numel() for p in model.parameters())
    steps_per_epoch = len(task.epoch_batches(0))
    total = args.epochs * steps_per_epoch
    log = sys.stderr
    print(
        f"[mmfast train] task={args.task} model={task.model_config()['kind']} "
        f"params={n_params:,} epochs={args.epochs} steps/epoch={steps_per_epoch} "
        f"(data loaded in {load_s:.1f}s)",
        file=log,
    )

    def write_config(epochs_done: int, test: dict[str, Any] | None = None) -> None:
        cfg = {
            "format": 1,
            "task": args.task,
            "model": task.model_config(),
            "preprocess": prep.to_dict(),
            "vocab": "vocab.txt",
            "train_args": {**asdict(args), "widths": list(args.widths)},
            "progress": {
                "epochs_done": epochs_done,
                "history": history,
                "train_seconds": round(train_s, 2),
            },
            "test": test,
        }
        (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    task.save_vocab(out)
    last = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    for epoch in range(start, last):
        t0 = time.perf_counter()
        model.train()
        batches = task.epoch_batches(epoch)
        bar = tqdm(
            batches,
            desc=f"{args.task} epoch {epoch + 1}/{args.epochs}",
            disable=not args.progress,
            file=log,
            dynamic_ncols=True,
        )
        run_loss, n = 0.0, 0
        for i, batch in enumerate(bar):
            lr = _lr_at(epoch * steps_per_epoch + i, total, args.lr, args.warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = task.loss(batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            opt.step()
            run_loss += float(loss.detach())
            n += 1
            if i % 10 == 0:
                bar.set_postfix(loss=f"{run_loss / n:.3f}", lr=f"{lr:.2e}")
        model.eval()
        val = task.validate()
        dt = time.perf_counter() - t0
        train_s += dt
        rec = {
            "epoch": epoch + 1,
            "train_loss": run_loss / max(n, 1),
            **val,
            "seconds": round(dt, 1),
        }
        history.append(rec)
        print(
            "[mmfast train] "
            + " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
            ),
            file=log,
        )
        save_weights(model, out / "model.safetensors")
        save_optimizer(opt, out / "optimizer.safetensors")
        save_rng(out / "rng.safetensors")
        write_config(epoch + 1)
    if last < args.epochs:
        print(
            f"[mmfast train] stopped after epoch {last}/{args.epochs}; --resume continues", file=log
        )
        return {"task": args.task, "stopped_after": last, "train_seconds": round(train_s, 1)}
    model.eval()
    t0 = time.perf_counter()
    test = task.test(out)
    eval_s = time.perf_counter() - t0
    summary = {
        "task": args.task,
        "model": task.model_config()["kind"],
        "test": test,
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "epochs": args.epochs,
        "params": n_params,
        "threads": args.threads,
    }
    write_config(args.epochs, test)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("[mmfast train] test: " + " ".join(f"{k}={v:.4f}" for k, v in test.items()), file=log)
    print(f"[mmfast train] train {train_s:.0f}s, eval {eval_s:.0f}s -> {out}", file=log)
    return summary
