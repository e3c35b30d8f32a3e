"""VQA: a classifier over the training answers; accuracy on the val split, and per question
type on the test split. Questions come from ``vqa_{split}.json`` next to the captions files.

Two model families (``--model``): ``attention`` (question-guided attention, kind ``vqa``) and
``transformer`` (a joint Transformer over the question and the regions, kind
``vqa_transformer``); the same data, loss and metrics for both."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mmfast.tokenizer import Tokenizer

from ..coco import SplitFiles, VqaData, load_vqa
from ..metrics import vqa_accuracy
from ..models.encoder import EncoderConfig
from ..models.vqa import VQAConfig, VQAModel
from ..models.vqa_transformer import VQATransformer, VQATransformerConfig
from .base import Defaults, Task, TaskSetup
from .data import chunks, epoch_generator, pad

__all__ = ["VQA_MODELS", "VQATask"]

VQAModels = VQAModel | VQATransformer
# --model's values, in the order the CLI lists them (train.TrainArgs checks, a test compares)
VQA_MODELS = ("attention", "transformer")


def _question_files(splits: dict[str, SplitFiles]) -> dict[str, Path]:
    """Each split's ``vqa_{split}.json``; a missing one is an error."""
    files: dict[str, Path] = {}
    for s in ("train", "val", "test"):
        f = splits[s].vqa_json
        if f is None:
            raise FileNotFoundError(f"VQA needs vqa_{s}.json next to the captions files")
        files[s] = f
    return files


class VQATask(Task[torch.Tensor, VQAModels]):
    """A batch is a tensor of image indices (every question about each image is a target)."""

    name = "vqa"
    defaults = Defaults(epochs=5, batch_size=32, lr=2e-3)

    def __init__(self, setup: TaskSetup) -> None:
        qa_files = _question_files(setup.splits)  # before the (slow) image loading
        super().__init__(setup)
        self.qa: dict[str, VqaData] = {s: load_vqa(qa_files[s], d) for s, d in self.data.items()}
        if setup.resume is not None:
            self.tok = Tokenizer.load(setup.resume / "vocab.txt")
            self.answers = (setup.resume / "answers.txt").read_text().splitlines()
        else:
            self.tok = Tokenizer.build(self.qa["train"].questions)
            self.answers = sorted(set(self.qa["train"].answers))
        self.model = self._model(setup.resume)
        self.ans_index = {a: i for i, a in enumerate(self.answers)}
        self.q_ids = {s: [self.tok.encode(q) for q in v.questions] for s, v in self.qa.items()}
        self.by_image: list[list[int]] = [[] for _ in self.data["train"].image_ids]
        for qi, k in enumerate(self.qa["train"].image_index):
            self.by_image[k].append(qi)

    def _model(self, resume: Path | None) -> VQAModels:
        """The resumed run's model (of the family it was trained with), or a new one of
        ``--model``'s family sized to the vocabulary, the answers and the questions."""
        if resume is not None:
            model = self.resumed_model(resume)
            assert isinstance(model, VQAModel | VQATransformer)
            return model
        longest = max(len(self.tok.encode(q)) for q in self.qa["train"].questions)
        enc = EncoderConfig(self.prep.size, tuple(self.args.widths))
        size = (len(self.tok), len(self.answers), enc)
        max_len = min(longest + 4, 64)
        if self.args.model == "attention":
            return VQAModel(VQAConfig(*size, max_len=max_len))
        if self.args.model == "transformer":
            return VQATransformer(VQATransformerConfig(*size, max_len=max_len))
        raise ValueError(f"--model must be one of {', '.join(VQA_MODELS)}, got {self.args.model!r}")

    def save_vocab(self, out: Path) -> None:
        super().save_vocab(out)
        (out / "answers.txt").write_text("\n".join(self.answers) + "\n")

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        g = epoch_generator(self.args.seed, epoch)
        have = torch.tensor([i for i, q in enumerate(self.by_image) if q], dtype=torch.long)
        perm = have[torch.randperm(len(have), generator=g)]
        return chunks(perm, self.batch_size)

    def _forward(self, split: str, img_idx: torch.Tensor, q_idx: list[int]) -> torch.Tensor:
        """Answer logits (Q, A) for questions ``q_idx`` about images ``img_idx`` of a split."""
        m = self.model
        pos = {i: k for k, i in enumerate(img_idx.tolist())}
        image_index = torch.tensor([pos[self.qa[split].image_index[q]] for q in q_idx])
        questions = pad([self.q_ids[split][q] for q in q_idx])[:, : m.cfg.max_len]
        logits, _ = m(self.images(self.data[split].pixels[img_idx]), questions, image_index)
        return logits

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
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
        for idx in chunks(torch.arange(len(by_image)), 250):
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
