"""Visual question answering over an exported bundle (ONNX Runtime, no torch).

    vqa = mmfast.VQA.load("bundle/")
    a = vqa.answer("image.png", "what colour is the circle?")
    print(a.text, a.confidence)

The image encoder runs once per image; the answer head takes the image's regions and the
question and classifies over the answers seen in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import ops
from ._pipeline import ImageLike, Pipeline
from .bundle import Bundle, BundleFormatError, BundleGraphError, BundleMismatchError, Manifest

__all__ = ["VQA", "Answer"]


@dataclass
class Answer:
    text: str
    confidence: float  # softmax probability of the answer
    attention: np.ndarray  # (glimpses, regions) where the model looked


class VQA(Pipeline):
    task = "vqa"

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(bundle, device, threads)
        m = bundle.manifest
        assert m.vqa is not None  # a vqa bundle's: checked at load
        self.max_len = m.vqa.max_len

    @classmethod
    def graph_files(cls, manifest: Manifest) -> list[str]:
        return ["image_encoder.onnx", "answer_head.onnx"]

    def check_bundle(self) -> None:
        self.require_io("image_encoder.onnx", ["images"], ["regions"])
        self.require_io("answer_head.onnx", ["regions", "questions"], ["logits", "attention"])
        # the answers, one a line, are the classes of the head's logits, in order
        name = self.bundle.manifest.answers
        assert name is not None  # a vqa bundle's: checked at load
        path = self.bundle.file(name)
        try:
            self.answers = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:  # (its message would quote the file's bytes)
            raise BundleFormatError(f"{path}: not UTF-8 text (at byte {e.start})") from None
        if not self.answers:
            raise BundleMismatchError(f"{path}: no answers")
        n = len(self.answers)
        self.require_dim("answer_head.onnx", "logits", -1, n, f"{name} has {n} answers")

    def answer(self, image: ImageLike, question: str) -> Answer:
        """Answer one question about one image."""
        return self.answer_many([image], [[question]])[0][0]

    def answer_many(
        self, images: Sequence[ImageLike], questions: Sequence[Sequence[str]]
    ) -> list[list[Answer]]:
        """questions[i] are the questions about images[i]; each image is encoded once."""
        for name, seq in (("images", images), ("questions", questions)):
            if isinstance(seq, str) or not isinstance(seq, Sequence):
                raise TypeError(f"{name}: expected a list, got {type(seq).__name__}")
        if len(images) != len(questions):
            raise ValueError(f"questions: {len(questions)} lists for {len(images)} images")
        for i, qs in enumerate(questions):
            if isinstance(qs, str) or not isinstance(qs, Sequence):  # "what" is not 4 questions
                raise TypeError(
                    f"questions[{i}]: expected a list of questions about images[{i}], "
                    f"got {type(qs).__name__}"
                )
        flat = [(i, q) for i, qs in enumerate(questions) for q in qs]
        for i, q in flat:
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"question (image {i}): expected a non-empty string, got {q!r}")
        if not flat:
            return [[] for _ in images]
        regions = self.run("image_encoder.onnx", {"images": self.pixels(images)})["regions"]
        tokens = self.tokens([q for _, q in flat], self.max_len)
        out = self.run(
            "answer_head.onnx",
            {"regions": regions[[i for i, _ in flat]], "questions": tokens},
        )
        probs = ops.softmax(np.ascontiguousarray(out["logits"], dtype=np.float32))
        best = probs.argmax(-1)
        if probs.shape[-1] != len(self.answers):  # a head whose answer count is not fixed
            raise BundleGraphError(
                f"{self.bundle.path / 'answer_head.onnx'}: {probs.shape[-1]} logits for "
                f"{len(self.answers)} answers"
            )
        result: list[list[Answer]] = [[] for _ in images]
        for n, (i, _) in enumerate(flat):
            result[i].append(
                Answer(self.answers[best[n]], float(probs[n, best[n]]), out["attention"][n])
            )
        return result
