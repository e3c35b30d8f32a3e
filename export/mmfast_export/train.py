"""The training loop, the same for every task (the tasks are in ``tasks/``).

CPU-friendly and reproducible: one seed fixes the initial weights, each epoch's order (a
generator seeded with ``(seed, epoch)``) and dropout (the torch RNG, saved with every
checkpoint). A checkpoint is written after every epoch; ``resume`` continues from the last one
and gives the same weights as an uninterrupted run (for the retriever only with one thread: the
CPU backward of its re-ranker's gather adds in a thread-dependent order). An evaluation on the
test split ends the run.
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
from torch import nn
from tqdm import tqdm

from mmfast.preprocess import MAX_SIZE, PreprocessConfig

from .checkpoint import (
    load_optimizer,
    load_rng,
    load_weights,
    save_optimizer,
    save_rng,
    save_weights,
)
from .coco import resolve_splits
from .field_checks import FieldError, at_least, finite_at_least, in_range
from .runs import read_config
from .tasks import TASKS, Task, TaskSetup
from .tasks.vqa import VQA_MODELS

__all__ = ["TrainArgs", "train"]


@dataclass
class TrainArgs:
    """Everything a run is trained with (saved in its config.json). ``epochs``, ``batch_size``
    and ``lr`` left as None take the task's defaults; ``decoder``, ``model``, ``beam``,
    ``length_penalty`` and ``rerank_k`` are read by one task each (``tasks.base.TaskArgs``)."""

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
    model: str = "attention"  # vqa: "attention" (kind "vqa") or "transformer"
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

    def __post_init__(self) -> None:
        for name in (
            "epochs",
            "batch_size",
            "threads",
            "beam",
            "rerank_k",
            "limit_train",
            "limit_eval",
            "stop_after",
        ):
            at_least(name, getattr(self, name), 1)  # None: the default applies
        if self.image_size is not None:
            in_range("image_size", self.image_size, 8, MAX_SIZE, unit=" px")
        if not self.widths or not all(type(w) is int and w >= 1 for w in self.widths):
            raise FieldError(["widths"], "must be positive channel counts", self.widths)
        if self.lr is not None:
            finite_at_least("lr", self.lr, 0.0, strict=True)
        finite_at_least("weight_decay", self.weight_decay, 0.0)
        finite_at_least("length_penalty", self.length_penalty, 0.0)
        in_range("warmup", self.warmup, 0.0, 1.0)
        if self.model not in VQA_MODELS:  # before any data is read
            raise FieldError(["model"], f"must be one of {', '.join(VQA_MODELS)}", self.model)

    def resolved(self) -> TrainArgs:
        """A copy with the task's defaults filled in."""
        d = TASKS[self.task].defaults
        return TrainArgs(
            **{
                **asdict(self),
                "epochs": self.epochs if self.epochs is not None else d.epochs,
                "batch_size": self.batch_size if self.batch_size is not None else d.batch_size,
                "lr": self.lr if self.lr is not None else d.lr,
                "widths": tuple(self.widths),
            }
        )


def _lr_at(step: int, total: int, base: float, warmup: float) -> float:
    """Linear warm-up, then cosine decay to 2% of the base rate."""
    w = max(1, int(total * warmup))
    if step < w:
        return base * (step + 1) / w
    p = min(1.0, (step - w) / max(1, total - w))
    return base * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * p)))


def _optimizer(model: nn.Module, lr: float, wd: float) -> torch.optim.AdamW:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
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


def _fit_epoch(
    task: Task[Any, Any],
    model: nn.Module,
    opt: torch.optim.Optimizer,
    args: TrainArgs,
    epoch: int,
    steps_per_epoch: int,
) -> float:
    """One epoch of optimisation steps; returns the mean training loss."""
    assert args.epochs is not None and args.lr is not None
    total = args.epochs * steps_per_epoch  # the schedule spans every epoch, run or not
    model.train()
    bar = tqdm(
        task.epoch_batches(epoch),
        desc=f"{args.task} epoch {epoch + 1}/{args.epochs}",
        disable=not args.progress,
        file=sys.stderr,
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
    return run_loss / max(n, 1)


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
        saved = read_config(out)
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
    task = TASKS[args.task](TaskSetup(args, splits, prep, out if saved is not None else None))
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
        train_loss = _fit_epoch(task, model, opt, args, epoch, steps_per_epoch)
        model.eval()
        val = task.validate()
        dt = time.perf_counter() - t0
        train_s += dt
        rec = {"epoch": epoch + 1, "train_loss": train_loss, **val, "seconds": round(dt, 1)}
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
