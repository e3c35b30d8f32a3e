"""A shapes split's questions in the VQA v2 format, with ten simulated human answers each.

The official score (mmfast.vqa_eval) needs ten human answers per question; the shapes
generator knows one true answer. The ten humans here are simulated, deterministically
(``np.random.default_rng([seed, question_id, 3])``), to look like VQA v2's:

- Most humans type the shapes answer as the generator writes it ("two", "red", "yes"), so a
  model trained on the shapes data that answers right scores 100 on the question.
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
    "human_answers",
    "questions_file",
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


def _variants(answer: str) -> list[str]:
    """Spellings of ``answer`` that normalise to what it normalises to."""
    canon = normalize_answer(answer)
    out = [answer.capitalize(), answer + ".", canon]
    if canon.isdigit() and int(canon) < len(DIGIT_WORDS):
        out += [DIGIT_WORDS[int(canon)], DIGIT_WORDS[int(canon)].capitalize() + "."]
    elif canon in ("yes", "no"):
        out += [answer + "!", answer.upper()]
    else:
        out += [f"the {answer}", f"a {answer}."]
    return [v for v in dict.fromkeys(out) if v != answer]


def _wrong_answers(answer: str, seen: Sequence[str]) -> list[str]:
    """Plausible wrong answers: the other of yes/no, a neighbouring count, or another answer
    seen for the same question type (``seen``); normalised forms differ from ``answer``'s."""
    canon = normalize_answer(answer)
    if canon in ("yes", "no"):
        return ["no" if canon == "yes" else "yes"]
    if canon.isdigit():
        n = int(canon)
        return [DIGIT_WORDS[k] for k in (n - 1, n + 1) if 0 <= k < len(DIGIT_WORDS)]
    return [s for s in seen if normalize_answer(s) != canon]


def human_answers(
    answer: str, seen: Sequence[str], rng: np.random.Generator
) -> tuple[HumanAnswer, ...]:
    """Ten simulated human answers to a question whose true answer is ``answer`` (see the
    module docstring); ``seen``: the answers of questions of the same type, for wrong ones."""
    variants = _variants(answer)
    wrong = _wrong_answers(answer, seen)
    n_wrong = 0
    if wrong and rng.random() < P_SOME_WRONG:
        n_wrong = int(rng.integers(1, MAX_WRONG + 1))
    texts: list[tuple[str, str]] = []  # (answer, answer_confidence)
    for k in range(HUMANS):
        if k < n_wrong:
            texts.append((str(rng.choice(wrong)), str(rng.choice(["yes", "maybe", "no"]))))
        elif rng.random() < P_VARIANT:
            texts.append((str(rng.choice(variants)), "yes"))
        else:
            texts.append((answer, "yes"))
    order = rng.permutation(HUMANS)
    return tuple(
        HumanAnswer(texts[int(k)][0], texts[int(k)][1], answer_id=j + 1)
        for j, k in enumerate(order)
    )


def write_vqa_v2(
    out: str | Path, split: str, questions: Sequence[Mapping[str, Any]], seed: int
) -> dict[str, int]:
    """Write ``questions`` (the shapes records: question_id, image_id, question, answer, type)
    as a VQA v2 questions file and annotations file under ``out/vqa_v2``; returns counts."""
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    seen: dict[str, list[str]] = {}  # question type -> its answers, sorted (deterministic)
    for q in questions:
        seen.setdefault(q["type"], []).append(q["answer"])
    seen = {t: sorted(set(v)) for t, v in seen.items()}
    annotations = []
    for q in questions:
        rng = np.random.default_rng([seed, int(q["question_id"]), 3])
        humans = human_answers(q["answer"], seen[q["type"]], rng)
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
