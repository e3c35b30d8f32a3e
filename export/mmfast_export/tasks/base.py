"""What the training loop asks of a task, and what a task is built from.

A task owns its data, its model, one batch's loss and its evaluation; the loop (``train.py``)
owns the optimisation, the schedule and the checkpoints, and knows no task by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch
from torch import nn

from mmfast.preprocess import PreprocessConfig
from mmfast.tokenizer import Tokenizer

from ..coco import CaptionData, SplitFiles, load_captions
from ..runs import build_model, model_config, read_config
from ..transforms import preprocess_tensor

__all__ = ["Defaults", "Task", "TaskArgs", "TaskSetup"]

Batch = TypeVar("Batch")  # what a task's epoch_batches yields and its loss takes
Model = TypeVar("Model", bound=nn.Module)  # the task's model families


class TaskArgs(Protocol):
    """The training arguments a task reads (``train.TrainArgs``, resolved, has them all)."""

    @property
    def seed(self) -> int: ...
    @property
    def batch_size(self) -> int | None: ...  # images per batch; set once resolved
    @property
    def widths(self) -> tuple[int, ...]: ...  # CNN stage widths of a new model
    @property
    def limit_train(self) -> int | None: ...
    @property
    def limit_eval(self) -> int | None: ...
    @property
    def decoder(self) -> str: ...  # caption: "lstm" or "transformer"
    @property
    def model(self) -> str: ...  # vqa: "attention" or "transformer"
    @property
    def beam(self) -> int: ...  # caption: beam size of the final evaluation
    @property
    def length_penalty(self) -> float: ...
    @property
    def rerank_k(self) -> int: ...  # retrieval: images re-ranked per query in the test


@dataclass(frozen=True)
class TaskSetup:
    """What a task is built from."""

    args: TaskArgs
    splits: dict[str, SplitFiles]  # "train", "val", "test" -> files
    prep: PreprocessConfig  # image preprocessing, saved with the run
    resume: Path | None  # the run directory being continued, or None for a new run


@dataclass(frozen=True)
class Defaults:
    """A task's defaults for the arguments left unset (sized to train in well under 10 minutes
    on 2 CPU cores with the default dataset)."""

    epochs: int
    batch_size: int  # images per batch
    lr: float


class Task(ABC, Generic[Batch, Model]):
    """What differs between tasks: data, model, one batch's loss, evaluation.

    Built by the loop right after ``torch.manual_seed(args.seed)``, so a new model's initial
    weights follow from the seed. A resumed run (``setup.resume``) reuses its tokenizer and
    model config; the loop then loads the weights, the optimizer and the RNG.
    """

    name: ClassVar[str]
    defaults: ClassVar[Defaults]
    model: Model
    tok: Tokenizer

    def __init__(self, setup: TaskSetup) -> None:
        self.args = setup.args
        self.prep = setup.prep
        # every task trains on images with captions: "train", "val", "test" -> that split
        self.data = _load_splits(setup.args, setup.splits, setup.prep)

    @property
    def batch_size(self) -> int:
        assert self.args.batch_size is not None, "TrainArgs.resolved() sets it"
        return self.args.batch_size

    def images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, S, S) in [0, 255] -> the model's input (B, 3, S, S), normalised."""
        # channels-last: oneDNN's convolutions run about twice as fast on CPU in this layout
        x = preprocess_tensor(pixels, self.prep)
        return x.contiguous(memory_format=torch.channels_last)

    @abstractmethod
    def epoch_batches(self, epoch: int) -> list[Batch]:
        """The epoch's batches, in order (a function of ``(seed, epoch)`` only)."""

    @abstractmethod
    def loss(self, batch: Batch) -> torch.Tensor:
        """One batch's training loss (a scalar)."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Metrics on the val split after each epoch (names start with ``val_``)."""

    @abstractmethod
    def test(self, out: Path) -> dict[str, float]:
        """The final evaluation on the test split; may write predictions under ``out``."""

    def model_config(self) -> dict[str, Any]:
        """``config.json``'s ``"model"`` entry."""
        return model_config(self.model)

    def save_vocab(self, out: Path) -> None:
        self.tok.save(out / "vocab.txt")

    def resumed_model(self, resume: Path) -> nn.Module:
        """The model of the run being resumed, freshly initialised (the loop loads its weights)."""
        return build_model(self.name, read_config(resume)["model"])


def _load_splits(
    args: TaskArgs, splits: dict[str, SplitFiles], prep: PreprocessConfig
) -> dict[str, CaptionData]:
    """The train, val and test images with their captions, each split cut to its limit."""
    limits = {"train": args.limit_train, "val": args.limit_eval, "test": args.limit_eval}
    return {s: load_captions(splits[s], prep, limit) for s, limit in limits.items()}
