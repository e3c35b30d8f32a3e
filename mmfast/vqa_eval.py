"""The VQA v2 files and the official VQA accuracy (numpy-free, torch-free).

The files (Goyal et al. 2017, https://visualqa.org/download.html)::

    questions:   {"info": {...}, "task_type": "Open-Ended", "data_type": "mscoco",
                  "data_subtype": "val2014", "license": {...},
                  "questions": [{"image_id": 42, "question": "What ...?", "question_id": 42000}]}
    annotations: {"info": ..., "data_type": ..., "data_subtype": ..., "license": ...,
                  "annotations": [{"question_id": 42000, "image_id": 42,
                                   "question_type": "what color is the", "answer_type": "other",
                                   "multiple_choice_answer": "red",
                                   "answers": [{"answer": "red", "answer_confidence": "yes",
                                                "answer_id": 1}, ... ten of them]}]}
    results:     [{"question_id": 42000, "answer": "red"}, ...]

Every record is checked as a file is read; a malformed one is a ValueError naming the file and
the record (``annotations[12].answers[3].answer``).

The score is the one the official evaluation code computes (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, as fixed in March 2021), reimplemented:

- Every answer, human or machine, has newlines and tabs made spaces and is stripped.
- If the humans gave more than one distinct answer string, every human answer and the machine
  answer are normalised (``normalize_answer``: punctuation, then lower case, number words to
  digits, articles dropped, apostrophes restored in contractions). If all ten humans typed the
  same string, nothing is normalised: the machine must match it exactly.
- A question's accuracy is the mean, over the ten humans, of ``min(1, matches / 3)``, where
  ``matches`` counts the *other* humans whose answer equals the machine's (a human record is
  compared as a whole, answer, confidence and id, as the official code compares dicts).
- Overall, per answer type and per question type: the mean over questions, in percent.

Before the 2021 fix (and in the EvalAI server's copy) the machine answer was always
normalised and the human answers by punctuation only; scores differ on questions whose humans
answered in non-normalised form.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ANSWER_TYPES",
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "HumanAnswer",
    "VQAAnnotation",
    "VQAQuestion",
    "VQAQuestions",
    "VQAScore",
    "check_vqa_pair",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
    "question_accuracy",
    "read_vqa_annotations",
    "read_vqa_questions",
    "read_vqa_results",
    "strip_answer",
    "vqa_score",
    "write_vqa_annotations",
    "write_vqa_questions",
    "write_vqa_results",
]

ANSWER_TYPES: tuple[str, ...] = ("yes/no", "number", "other")  # VQA v2's answer_type values

# ------------------------------------------------------------------------------ normalisation

# Contractions written without their apostrophes get them back. The official table lists, for
# each contracted form, the spellings with exactly one of its apostrophes missing ("couldn't've"
# <- "couldnt've", "couldn'tve"; but not "couldntve"): derived here by that rule from the forms.
_CONTRACTED_FORMS = """
    ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've
    hasn't haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've
    it'll ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't
    'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've somebody'll
    somebody's someone'd someone'd've someone'll someone's something'd something'd've
    something'll that's there'd there'd've there're there's they'd they'd've they'll they're
    they've 'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd
    where's where've who'd who'd've who'll who's who've why'll why're why's won't would've
    wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _one_apostrophe_dropped(form: str) -> list[str]:
    at = [i for i, c in enumerate(form) if c == "'"]
    return [form[:i] + form[i + 1 :] for i in at]


CONTRACTIONS: dict[str, str] = {
    k: form for form in _CONTRACTED_FORMS for k in _one_apostrophe_dropped(form)
}
# The official table's one entry that runs the other way (it also maps "let's" and "she's" to
# themselves, which changes nothing). Its keys with capitals ("Im", "Id've") can never match:
# words are lower-cased first. Both kept, for the same score.
CONTRACTIONS["somebody'd"] = "somebodyd"

NUMBER_WORDS: dict[str, str] = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
NUMBER_WORDS["none"] = "0"
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Removed, or made a space (see process_punctuation). Not the period, the apostrophe, ":", "$".
_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
# A comma between digits ("1,000"): its presence anywhere removes all punctuation instead.
# (re.ASCII: the official code runs on Python 2, where \d is [0-9] without re.UNICODE.)
_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)", re.ASCII)
# The official pattern, kept as written: "(?!<=\d)" is a lookahead that always holds before a
# ".", so this is "a period not followed by a digit" ("3.5" keeps its point, "dog." loses it).
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
# The official code passes re.UNICODE (32) where re.sub takes `count`: at most 32 periods go.
_MAX_PERIODS = int(re.UNICODE)


def strip_answer(text: str) -> str:
    """Newlines and tabs made spaces, ends stripped: done to every answer before comparison."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """Each punctuation mark is deleted where it touches a space (or if the answer holds a
    digit-comma-digit anywhere), else made a space ("black/white" -> "black white"); then
    periods not followed by a digit are deleted."""
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        # the test reads the answer as given, not as changed by the marks before
        delete = delete_all or (p + " " in text) or (" " + p in text)
        out = out.replace(p, "" if delete else " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS)


def process_digit_article(text: str) -> str:
    """Lower case; number words zero..ten (and "none") to digits; articles dropped;
    contractions given their apostrophes; words joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text: str) -> str:
    """The official normalisation of one answer ("Two dogs." -> "2 dogs")."""
    return process_digit_article(process_punctuation(strip_answer(text)))


# ------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class VQAQuestion:
    question_id: int
    image_id: int
    question: str


@dataclass(frozen=True)
class VQAQuestions:
    """A questions file: its header fields and its questions, in file order."""

    questions: list[VQAQuestion]
    task_type: str = "Open-Ended"
    data_type: str = ""  # "mscoco", "abstract_v002", ... ("" if absent)
    data_subtype: str = ""  # "val2014", ... (names the image folder and files in COCO)
    info: dict[str, Any] = field(default_factory=dict)
    license: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HumanAnswer:
    answer: str
    answer_confidence: str | None = None  # "yes", "maybe", "no"
    answer_id: int | None = None  # 1..10 within a question


@dataclass(frozen=True)
class VQAAnnotation:
    question_id: int
    image_id: int
    question_type: str  # a question prefix in VQA v2 ("what color is the", "how many")
    answer_type: str  # "yes/no", "number" or "other" in VQA v2
    answers: tuple[HumanAnswer, ...]  # ten in VQA v2
    multiple_choice_answer: str | None = None  # the most common human answer


# --------------------------------------------------------------------------------------- reading


def _load_json(path: str | Path, what: str) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:  # (its message would quote the file's bytes)
        raise ValueError(f"{p}: not a UTF-8 {what} file (at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not a JSON {what} file ({e.msg} at line {e.lineno})") from None


def _int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer, got {value!r:.80}")
    return value


def _str(value: object, where: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        kind = "a string" if empty_ok else "a non-empty string"
        raise ValueError(f"{where}: expected {kind}, got {value!r:.80}")
    return value


def _object(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _key(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: no {key!r}")
    return d[key]


def _unique_ids(ids: Iterable[int], where: str, key: str) -> None:
    seen: set[int] = set()
    for i, q in enumerate(ids):
        if q in seen:
            raise ValueError(f"{where}[{i}].{key}: {q} appears twice")
        seen.add(q)


def read_vqa_questions(path: str | Path) -> VQAQuestions:
    """Read a VQA v2 questions file (every record checked; question ids unique)."""
    top = _object(_load_json(path, "VQA questions"), f"{path}")
    qs = _list(_key(top, "questions", f"{path}"), f"{path}: questions")
    out = []
    for i, rec in enumerate(qs):
        where = f"{path}: questions[{i}]"
        r = _object(rec, where)
        out.append(
            VQAQuestion(
                question_id=_int(_key(r, "question_id", where), f"{where}.question_id"),
                image_id=_int(_key(r, "image_id", where), f"{where}.image_id"),
                question=_str(_key(r, "question", where), f"{where}.question"),
            )
        )
    _unique_ids((q.question_id for q in out), f"{path}: questions", "question_id")
    header = {}
    for key in ("task_type", "data_type", "data_subtype"):
        if key in top:
            header[key] = _str(top[key], f"{path}: {key}", empty_ok=True)
    info = _object(top.get("info", {}), f"{path}: info")
    lic = _object(top.get("license", {}), f"{path}: license")
    return VQAQuestions(out, info=info, license=lic, **header)


def _human_answer(rec: object, where: str) -> HumanAnswer:
    r = _object(rec, where)
    conf = r.get("answer_confidence")
    aid = r.get("answer_id")
    return HumanAnswer(
        answer=_str(_key(r, "answer", where), f"{where}.answer", empty_ok=True),
        answer_confidence=None if conf is None else _str(conf, f"{where}.answer_confidence"),
        answer_id=None if aid is None else _int(aid, f"{where}.answer_id"),
    )


def read_vqa_annotations(path: str | Path) -> list[VQAAnnotation]:
    """Read a VQA v2 annotations file (every record checked; question ids unique; at least
    one human answer per question)."""
    top = _object(_load_json(path, "VQA annotations"), f"{path}")
    anns = _list(_key(top, "annotations", f"{path}"), f"{path}: annotations")
    out = []
    for i, rec in enumerate(anns):
        where = f"{path}: annotations[{i}]"
        r = _object(rec, where)
        answers = _list(_key(r, "answers", where), f"{where}.answers")
        if not answers:
            raise ValueError(f"{where}.answers: empty (the score needs the humans' answers)")
        mc = r.get("multiple_choice_answer")
        out.append(
            VQAAnnotation(
                question_id=_int(_key(r, "question_id", where), f"{where}.question_id"),
                image_id=_int(_key(r, "image_id", where), f"{where}.image_id"),
                question_type=_str(_key(r, "question_type", where), f"{where}.question_type"),
                answer_type=_str(_key(r, "answer_type", where), f"{where}.answer_type"),
                answers=tuple(
                    _human_answer(a, f"{where}.answers[{j}]") for j, a in enumerate(answers)
                ),
                multiple_choice_answer=None
                if mc is None
                else _str(mc, f"{where}.multiple_choice_answer", empty_ok=True),
            )
        )
    _unique_ids((a.question_id for a in out), f"{path}: annotations", "question_id")
    return out


def check_vqa_pair(
    questions: VQAQuestions,
    annotations: Sequence[VQAAnnotation],
    questions_path: str | Path = "questions",
    annotations_path: str | Path = "annotations",
) -> None:
    """The two files describe the same questions: the same question ids, each on the same
    image. (The official tools assume it; a mismatch would score the wrong questions.)"""
    image_of = {q.question_id: q.image_id for q in questions.questions}
    seen = set()
    for i, a in enumerate(annotations):
        if a.question_id not in image_of:
            raise ValueError(
                f"{annotations_path}: annotations[{i}].question_id {a.question_id} is not in "
                f"{questions_path}"
            )
        if image_of[a.question_id] != a.image_id:
            raise ValueError(
                f"{annotations_path}: annotations[{i}] (question {a.question_id}) is on image "
                f"{a.image_id}, {questions_path} says image {image_of[a.question_id]}"
            )
        seen.add(a.question_id)
    missing = [q.question_id for q in questions.questions if q.question_id not in seen]
    if missing:
        raise ValueError(
            f"{annotations_path}: no annotation for {len(missing)} of the "
            f"{len(questions.questions)} questions in {questions_path} (first: question_id "
            f"{missing[0]})"
        )


def read_vqa_results(path: str | Path) -> dict[int, str]:
    """Read a results file: {question_id: answer}, in file order; a question answered twice
    is an error (the official loader would keep the last answer silently)."""
    recs = _list(_load_json(path, "VQA results"), f"{path}")
    out: dict[int, str] = {}
    for i, rec in enumerate(recs):
        where = f"{path}: [{i}]"
        r = _object(rec, where)
        qid = _int(_key(r, "question_id", where), f"{where}.question_id")
        if qid in out:
            raise ValueError(f"{where}.question_id: {qid} is answered twice")
        out[qid] = _str(_key(r, "answer", where), f"{where}.answer", empty_ok=True)
    return out


# --------------------------------------------------------------------------------------- writing


def _write_json(path: str | Path, obj: object) -> None:
    Path(path).write_text(json.dumps(obj, ensure_ascii=False) + "\n", encoding="utf-8")


def write_vqa_results(path: str | Path, results: Mapping[int, str]) -> None:
    """Write ``{question_id: answer}`` as the official results file."""
    _write_json(path, [{"question_id": int(q), "answer": str(a)} for q, a in results.items()])


def write_vqa_questions(path: str | Path, questions: VQAQuestions) -> None:
    """Write a questions file in the VQA v2 layout (read back by ``read_vqa_questions``)."""
    _write_json(
        path,
        {
            "info": questions.info,
            "task_type": questions.task_type,
            "data_type": questions.data_type,
            "data_subtype": questions.data_subtype,
            "license": questions.license,
            "questions": [
                {"image_id": q.image_id, "question": q.question, "question_id": q.question_id}
                for q in questions.questions
            ],
        },
    )


def write_vqa_annotations(
    path: str | Path,
    annotations: Sequence[VQAAnnotation],
    *,
    data_type: str = "",
    data_subtype: str = "",
    info: Mapping[str, Any] | None = None,
    license: Mapping[str, Any] | None = None,
) -> None:
    """Write an annotations file in the VQA v2 layout (read back by ``read_vqa_annotations``)."""

    def human(h: HumanAnswer) -> dict[str, Any]:
        d: dict[str, Any] = {"answer": h.answer}
        if h.answer_confidence is not None:
            d["answer_confidence"] = h.answer_confidence
        if h.answer_id is not None:
            d["answer_id"] = h.answer_id
        return d

    records = []
    for a in annotations:
        r: dict[str, Any] = {
            "question_id": a.question_id,
            "image_id": a.image_id,
            "question_type": a.question_type,
            "answer_type": a.answer_type,
        }
        if a.multiple_choice_answer is not None:
            r["multiple_choice_answer"] = a.multiple_choice_answer
        r["answers"] = [human(h) for h in a.answers]
        records.append(r)
    _write_json(
        path,
        {
            "info": dict(info or {}),
            "data_type": data_type,
            "data_subtype": data_subtype,
            "license": dict(license or {}),
            "annotations": records,
        },
    )


# ----------------------------------------------------------------------------------------- score


def question_accuracy(answer: str, humans: Sequence[HumanAnswer]) -> float:
    """One question's official accuracy in [0, 1]: the mean over the humans h of
    min(1, #(other humans whose answer equals ``answer``) / 3), after the normalisation the
    module docstring describes. "Other" means every human record not equal to h's as a whole
    (with distinct answer ids, all but h itself)."""
    if not humans:
        raise ValueError("humans: no human answers")
    raw = [strip_answer(h.answer) for h in humans]
    machine = strip_answer(answer)
    if len(set(raw)) > 1:  # the humans disagree: everything is normalised
        raw = [process_digit_article(process_punctuation(a)) for a in raw]
        machine = process_digit_article(process_punctuation(machine))
    records = [(a, h.answer_confidence, h.answer_id) for a, h in zip(raw, humans, strict=True)]
    copies = Counter(records)  # records equal to a human's own, its own included
    matches = sum(a == machine for a in raw)
    total = 0.0
    for rec in records:  # summed in the humans' order, as the official code does
        others = matches - (copies[rec] if rec[0] == machine else 0)
        total += min(1.0, others / 3)
    return total / len(records)


@dataclass(frozen=True)
class VQAScore:
    """Accuracies in percent, unrounded (the official code shows 2 decimals)."""

    overall: float
    per_answer_type: dict[str, float]  # in order of first appearance
    per_question_type: dict[str, float]
    per_question: dict[int, float]
    n_questions: int
    n_per_answer_type: dict[str, int]
    n_per_question_type: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall,
            "per_answer_type": dict(self.per_answer_type),
            "per_question_type": dict(self.per_question_type),
            "n_questions": self.n_questions,
            "n_per_answer_type": dict(self.n_per_answer_type),
            "n_per_question_type": dict(self.n_per_question_type),
        }


def vqa_score(annotations: Sequence[VQAAnnotation], results: Mapping[int, str]) -> VQAScore:
    """The official VQA accuracy of ``results`` ({question_id: answer}) on ``annotations``.

    As the official loader requires, the results answer exactly the annotated questions: a
    missing or an extra question id is a ValueError (score a subset by passing the subset's
    annotations)."""
    if not annotations:
        raise ValueError("annotations: no questions to score")
    for qid, text in results.items():
        if not isinstance(text, str):
            raise TypeError(
                f"results[{qid!r}]: expected an answer string, got {type(text).__name__}"
            )
    ids = {a.question_id for a in annotations}
    missing = [a.question_id for a in annotations if a.question_id not in results]
    if missing:
        raise ValueError(
            f"results: no answer for {len(missing)} of the {len(annotations)} questions "
            f"(first: question_id {missing[0]})"
        )
    extra = [q for q in results if q not in ids]
    if extra:
        raise ValueError(
            f"results: {len(extra)} answers to questions not in the annotations "
            f"(first: question_id {extra[0]})"
        )
    per_question: dict[int, float] = {}
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    for a in annotations:
        acc = question_accuracy(results[a.question_id], a.answers)
        per_question[a.question_id] = acc
        by_answer_type.setdefault(a.answer_type, []).append(acc)
        by_question_type.setdefault(a.question_type, []).append(acc)

    def pct(accs: Iterable[float]) -> float:
        accs = list(accs)
        return 100.0 * sum(accs) / len(accs)

    return VQAScore(
        overall=pct(per_question.values()),
        per_answer_type={t: pct(v) for t, v in by_answer_type.items()},
        per_question_type={t: pct(v) for t, v in by_question_type.items()},
        per_question={q: 100.0 * v for q, v in per_question.items()},
        n_questions=len(per_question),
        n_per_answer_type={t: len(v) for t, v in by_answer_type.items()},
        n_per_question_type={t: len(v) for t, v in by_question_type.items()},
    )
