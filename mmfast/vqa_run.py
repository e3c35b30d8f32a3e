"""Answer a VQA v2 questions file with a VQA pipeline and score it (``mmfast eval vqa``).

    vqa = mmfast.VQA.load("bundle/")
    qs = read_vqa_questions("v2_OpenEnded_mscoco_val2014_questions.json")
    paths = image_paths(qs, "coco/val2014", COCO_PATTERN)
    results = answer_questions(vqa, qs.questions, paths, batch_size=32)   # {question_id: answer}
    vqa_score(read_vqa_annotations("v2_mscoco_val2014_annotations.json"), results)

Questions are grouped by image, so each image is encoded once however many questions it has.
"""

from __future__ import annotations

import string
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ._checks import positive_int
from .vqa_eval import VQAQuestion, VQAQuestions

__all__ = ["COCO_PATTERN", "Answerer", "answer_questions", "image_paths"]

# The COCO images' names: val2014/COCO_val2014_000000000042.jpg (pass --images coco/val2014).
COCO_PATTERN = "COCO_{data_subtype}_{image_id:012d}.jpg"
_PATTERN_FIELDS = ("image_id", "data_subtype")


class _HasText(Protocol):
    @property
    def text(self) -> str: ...


class Answerer(Protocol):
    """What answering needs of a pipeline (mmfast.VQA has it)."""

    def answer_many(
        self, images: Sequence[str], questions: Sequence[Sequence[str]]
    ) -> Sequence[Sequence[_HasText]]: ...


def image_paths(questions: VQAQuestions, root: str | Path, pattern: str) -> dict[int, Path]:
    """{image_id: root / pattern.format(image_id=..., data_subtype=...)} for every image the
    questions are about. The pattern may use only those two fields (with format specs, e.g.
    ``{image_id:012d}``); a path may not leave ``root``."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise ValueError(f"image pattern {pattern!r}: {e}") from None
    bad = [f for f in fields if f not in _PATTERN_FIELDS]
    if bad or "image_id" not in fields:
        raise ValueError(
            f"image pattern {pattern!r}: must name {{image_id}} and may name only "
            f"{', '.join('{' + f + '}' for f in _PATTERN_FIELDS)}"
        )
    root = Path(root)
    out: dict[int, Path] = {}
    for q in questions.questions:
        if q.image_id in out:
            continue
        try:
            name = pattern.format(image_id=q.image_id, data_subtype=questions.data_subtype)
        except (ValueError, TypeError) as e:  # a format spec that does not fit, e.g. {image_id:s}
            raise ValueError(f"image pattern {pattern!r}: {e}") from None
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"image pattern {pattern!r}: {name!r} would leave {root}")
        out[q.image_id] = root / rel
    return out


def answer_questions(
    vqa: Answerer,
    questions: Sequence[VQAQuestion],
    paths: Mapping[int, Path],
    batch_size: int = 32,
    progress: bool = False,
) -> dict[int, str]:
    """{question_id: answer} for ``questions``, in their order. Images (``paths[image_id]``)
    go ``batch_size`` at a time, each with all its questions; every image file is checked to
    exist before any is read (a missing one is a FileNotFoundError naming it)."""
    batch_size = positive_int("batch_size", batch_size)
    by_image: dict[int, list[VQAQuestion]] = {}  # in order of first appearance
    for q in questions:
        if q.image_id not in paths:
            raise ValueError(f"question {q.question_id}: no image path for image {q.image_id}")
        by_image.setdefault(q.image_id, []).append(q)
    missing = [paths[i] for i in by_image if not paths[i].is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(by_image)} images are missing (first: {missing[0]})"
        )
    image_ids = list(by_image)
    answers: dict[int, str] = {}
    try:
        for start in range(0, len(image_ids), batch_size):
            batch = image_ids[start : start + batch_size]
            got = vqa.answer_many(
                [str(paths[i]) for i in batch], [[q.question for q in by_image[i]] for i in batch]
            )
            if len(got) != len(batch):
                raise ValueError(f"answer_many: {len(got)} answer lists for {len(batch)} images")
            for i, answers_i in zip(batch, got, strict=True):
                qs = by_image[i]
                if len(answers_i) != len(qs):
                    raise ValueError(
                        f"answer_many: {len(answers_i)} answers for the {len(qs)} questions "
                        f"about image {i}"
                    )
                for q, a in zip(qs, answers_i, strict=True):
                    answers[q.question_id] = a.text
            if progress:
                done = min(start + batch_size, len(image_ids))
                print(
                    f"\ranswered images {done}/{len(image_ids)}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if progress:  # end the progress line, also before an error's message
            print(file=sys.stderr)
    return {q.question_id: answers[q.question_id] for q in questions}
