"""A shapes split's questions in the VQA v2 format, with ten simulated human answers each.

The official score (mmfast.vqa_eval) needs ten human answers per question; the shapes
generator knows one true answer. The ten humans here are simulated, deterministically
(``np.random.default_rng([seed, 3, crc32(split)])``), to look like VQA v2's:

- Most humans type the shapes answer as the generator writes it ("two", "red", "yes"), so a
  model trained on the shapes data that answers right gets full credit (unless most humans
  are wrong), even where the ten typed the same string and nothing is normalised.
- Some type a surface variant the official normalisation undoes ("2", "Two", "two.", "the red",
  "Yes!"). The official code normalises only when the humans' strings differ, which these make
  happen; a model answer "2" then matches too.
- On a fraction of the questions some humans answer wrongly (the other of yes/no, a
  neighbouring count, another colour/shape/size seen for that question type), so even a
  perfect model scores below 100 (about 98) and a wrong answer can earn partial credit.

``answer_type`` comes from the answer (yes/no, number, other); ``question_type`` is the shapes
generator's type (count, colour, shape, size, exist, relation).

Files (``write_vqa_v2``), named as VQA v2's are (v2_OpenEnded_mscoco_val2014_questions.json)::

    DIR/vqa_v2/v2_OpenEnded_shapes_{split}_questions.json
    DIR/vqa_v2/v2_shapes_{split}_annotations.json

with the images at DIR/images/{split}/000123.png, i.e. ``mmfast eval vqa --images DIR/images
--image-pattern "{data_subtype}/{image_id:06d}.png"`` (the data_subtype is the split).
"""

from __future__ import annotations

import functools
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmfast.vqa_eval import (
    HumanAnswer,
    VQAAnnotation,
    VQAQuestion,
    VQAQuestions,
    normalize_answer,
    write_vqa_annotations,
    write_vqa_questions,
)

__all__ = [
    "FOLDER",
    "IMAGE_PATTERN",
    "annotations_file",
    "answer_type",
    "questions_file",
    "simulate_humans",
    "to_training_questions",
    "write_vqa_v2",
]

FOLDER = "vqa_v2"
IMAGE_PATTERN = "{data_subtype}/{image_id:06d}.png"  # under DIR/images
HUMANS = 10
P_VARIANT = 0.25  # a human types a surface variant of the answer
P_SOME_WRONG = 0.3  # a question has some humans answering wrongly ...
MAX_WRONG = 8  # ... between 1 and this many (of 10)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def questions_file(split: str) -> str:
    return f"v2_OpenEnded_shapes_{split}_questions.json"


def annotations_file(split: str) -> str:
    return f"v2_shapes_{split}_annotations.json"


def answer_type(answer: str) -> str:
    """VQA v2's answer type of an answer, judged on its normalised form."""
    a = normalize_answer(answer)
    if a in ("yes", "no"):
        return "yes/no"
    return "number" if a.isdigit() else "other"


@functools.cache
def _variants(answer: str) -> tuple[str, ...]:
    """Spellings of ``answer`` that normalise to what it normalises to."""
    canon = normalize_answer(answer)
    out = [answer.capitalize(), answer + ".", canon]
    if canon.isdigit() and int(canon) < len(DIGIT_WORDS):
        out += [DIGIT_WORDS[int(canon)], DIGIT_WORDS[int(canon)].capitalize() + "."]
    elif canon in ("yes", "no"):
        out += [answer + "!", answer.upper()]
    else:
        out += [f"the {answer}", f"a {answer}."]
    return tuple(v for v in dict.fromkeys(out) if v != answer)


@functools.cache
def _wrong_answers(answer: str, seen: tuple[str, ...]) -> tuple[str, ...]:
    """Plausible wrong answers: the other of yes/no, a neighbouring count, or another answer
    seen for the same question type (``seen``); normalised forms differ from ``answer``'s."""
    canon = normalize_answer(answer)
    if canon in ("yes", "no"):
        return ("no" if canon == "yes" else "yes",)
    if canon.isdigit():
        n = int(canon)
        return tuple(DIGIT_WORDS[k] for k in (n - 1, n + 1) if 0 <= k < len(DIGIT_WORDS))
    return tuple(s for s in seen if normalize_answer(s) != canon)


_CONFIDENCES = ("yes", "maybe", "no")


def simulate_humans(
    questions: Sequence[Mapping[str, Any]], rng: np.random.Generator
) -> list[tuple[HumanAnswer, ...]]:
    """Ten simulated human answers to each question (a shapes record with "answer" and
    "type"), as the module docstring describes; all random draws made at once, (Q, 10)."""
    seen: dict[str, list[str]] = {}  # question type -> its answers, sorted (deterministic)
    for q in questions:
        seen.setdefault(q["type"], []).append(q["answer"])
    seen_sorted = {t: tuple(sorted(set(v))) for t, v in seen.items()}
    n = len(questions)
    some_wrong = rng.random(n) < P_SOME_WRONG  # (Q,)
    n_wrong = np.where(some_wrong, rng.integers(1, MAX_WRONG + 1, size=n), 0)  # (Q,)
    respell = rng.random((n, HUMANS)) < P_VARIANT  # (Q, 10)
    pick = rng.integers(0, 1 << 30, size=(n, HUMANS, 2))  # (Q, 10, variant | wrong answer)
    confidence = rng.integers(len(_CONFIDENCES), size=(n, HUMANS))  # (Q, 10)
    order = rng.permuted(np.tile(np.arange(HUMANS), (n, 1)), axis=1)  # (Q, 10)
    out = []
    for i, q in enumerate(questions):
        answer = q["answer"]
        variants = _variants(answer)
        wrong = _wrong_answers(answer, seen_sorted[q["type"]])
        texts: list[tuple[str, str]] = []  # (answer, answer_confidence), wrong ones first
        for k in range(HUMANS):
            if wrong and k < n_wrong[i]:
                w = wrong[pick[i, k, 1] % len(wrong)]
                texts.append((w, _CONFIDENCES[confidence[i, k]]))
            elif respell[i, k]:
                texts.append((variants[pick[i, k, 0] % len(variants)], "yes"))
            else:
                texts.append((answer, "yes"))
        out.append(
            tuple(HumanAnswer(*texts[k], answer_id=j + 1) for j, k in enumerate(order[i].tolist()))
        )
    return out


def write_vqa_v2(
    out: str | Path, split: str, questions: Sequence[Mapping[str, Any]], seed: int
) -> dict[str, int]:
    """Write ``questions`` (the shapes records: question_id, image_id, question, answer, type)
    as a VQA v2 questions file and annotations file under ``out/vqa_v2``; returns counts.
    The humans are drawn from ``default_rng([seed, 3, crc32(split)])``: the same questions
    and seed give the same files."""
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 3, zlib.crc32(split.encode())])
    annotations = []
    for q, humans in zip(questions, simulate_humans(questions, rng), strict=True):
        # VQA v2's multiple_choice_answer: the humans' most common answer
        most = Counter(h.answer for h in humans).most_common(1)[0][0]
        annotations.append(
            VQAAnnotation(
                question_id=int(q["question_id"]),
                image_id=int(q["image_id"]),
                question_type=q["type"],
                answer_type=answer_type(q["answer"]),
                answers=humans,
                multiple_choice_answer=most,
            )
        )
    info = {"description": f"mmfast shapes dataset ({split}), VQA v2 format", "version": "2.0"}
    write_vqa_questions(
        folder / questions_file(split),
        VQAQuestions(
            [
                VQAQuestion(int(q["question_id"]), int(q["image_id"]), q["question"])
                for q in questions
            ],
            task_type="Open-Ended",
            data_type="shapes",
            data_subtype=split,
            info=info,
        ),
    )
    write_vqa_annotations(
        folder / annotations_file(split),
        annotations,
        data_type="shapes",
        data_subtype=split,
        info=info,
    )
    return {"questions": len(annotations)}


def to_training_questions(
    questions_path: str | Path, annotations_path: str | Path
) -> dict[str, Any]:
    """A VQA v2 questions file + annotations file -> mmfast's training questions
    (``vqa_{split}.json``: ``{"questions": [{question_id, image_id, question, answer, type}]}``),
    one target answer per question as VQA training does: the humans' most common answer
    (``multiple_choice_answer``, or counted from the ten when a file lacks it), as typed (the
    official score does not normalise ten identical answers); ``type`` is the question type.
    The two files must hold the same questions (ValueError naming the first that differs)."""
    from mmfast.vqa_eval import check_vqa_pair, read_vqa_annotations, read_vqa_questions

    qs = read_vqa_questions(questions_path)
    anns = read_vqa_annotations(annotations_path)
    check_vqa_pair(qs, anns, questions_path, annotations_path)
    by_id = {a.question_id: a for a in anns}
    out = []
    for q in qs.questions:
        a = by_id[q.question_id]
        target = a.multiple_choice_answer
        if target is None:  # counted ties: the first typed wins, as Counter keeps order
            target = Counter(h.answer for h in a.answers).most_common(1)[0][0]
        out.append(
            {
                "question_id": q.question_id,
                "image_id": q.image_id,
                "question": q.question,
                "answer": target,
                "type": a.question_type,
            }
        )
    return {"questions": out}
