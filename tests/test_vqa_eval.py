"""The VQA v2 files and the official VQA accuracy (mmfast.vqa_eval), and the answering loop
(mmfast.vqa_run) with a stand-in pipeline. Torch-free.

Accuracies are checked against values worked out by hand in each test's docstring, and against
a brute-force float64 reference written here from the official definition (every human left
out in turn, the others compared one by one)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mmfast.vqa_eval import (
    HumanAnswer,
    VQAAnnotation,
    VQAQuestion,
    VQAQuestions,
    check_vqa_pair,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    question_accuracy,
    read_vqa_annotations,
    read_vqa_questions,
    read_vqa_results,
    strip_answer,
    vqa_score,
    write_vqa_annotations,
    write_vqa_questions,
    write_vqa_results,
)
from mmfast.vqa_run import COCO_PATTERN, answer_questions, image_paths


def humans(*answers: str) -> tuple[HumanAnswer, ...]:
    """Human answers with distinct ids 1..n (as in VQA v2)."""
    return tuple(HumanAnswer(a, "yes", i + 1) for i, a in enumerate(answers))


# ------------------------------------------------------------------------------ leave-one-out


@pytest.mark.parametrize(
    ("n_agree", "want"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (9, 1.0), (10, 1.0)],
)
def test_leave_one_out_by_hand(n_agree, want):
    """n of 10 humans said "red", the machine says "red". Leaving out human i:
    - i said red: n - 1 of the other 9 match -> min(1, (n - 1) / 3)
    - i did not:  n of the other 9 match     -> min(1, n / 3)
    mean = (n * min(1, (n-1)/3) + (10 - n) * min(1, n/3)) / 10:
      n=1: (1*0 + 9*1/3) / 10 = 0.3     n=2: (2*1/3 + 8*2/3) / 10 = 18/30 = 0.6
      n=3: (3*2/3 + 7*1) / 10 = 0.9      n=4: (4*1 + 6*1) / 10 = 1.0
    (the simple min(1, n/3) would give 0.667 for n=2, 1.0 for n=3: the average matters)."""
    hs = humans(*(["red"] * n_agree + [f"blue{i}" for i in range(10 - n_agree)]))
    assert question_accuracy("red", hs) == pytest.approx(want, abs=1e-15)


def test_identical_records_left_out_together():
    """The official code leaves out every human record equal to the one left out (it compares
    dicts). Three identical records {"red", "yes", id 1} and seven "blue"s, machine "red":
    - leaving out a red record removes all three: 0 matches -> 0 (three times)
    - leaving out a blue: 3 matches -> 1 (seven times)
    mean = 7 / 10 = 0.7 (with distinct ids it would be (3*2/3 + 7) / 10 = 0.9)."""
    same = [HumanAnswer("red", "yes", 1)] * 3
    blues = [HumanAnswer("blue", "yes", i) for i in range(2, 9)]
    assert question_accuracy("red", same + blues) == pytest.approx(0.7, abs=1e-15)
    distinct = humans(*(["red"] * 3 + ["blue"] * 7))
    assert question_accuracy("red", distinct) == pytest.approx(0.9, abs=1e-15)


def test_normalised_only_when_humans_disagree():
    """Ten identical strings: nothing is normalised, the machine must match exactly.
    Any difference among the humans: both sides are normalised."""
    all_two = humans(*["two"] * 10)
    assert question_accuracy("two", all_two) == 1.0
    assert question_accuracy("  two\n", all_two) == 1.0  # (stripping is always done)
    assert question_accuracy("2", all_two) == 0.0
    assert question_accuracy("Two", all_two) == 0.0
    mixed = humans(*(["two"] * 9 + ["2"]))  # all normalise to "2"
    for machine in ("2", "two", "Two.", "the two"):
        assert question_accuracy(machine, mixed) == 1.0, machine
    # Humans differing only in spaces at the ends are the same string after stripping.
    padded = humans(*(["Two"] * 9 + [" Two "]))
    assert question_accuracy("2", padded) == 0.0
    assert question_accuracy("Two", padded) == 1.0


def brute_force_accuracy(machine: str, hs: tuple[HumanAnswer, ...]) -> float:
    """The official definition, literally: normalise (if the humans disagree), then for each
    human the others are the records not equal to it, matches among them counted."""
    answers = [strip_answer(h.answer) for h in hs]
    m = strip_answer(machine)
    if len(set(answers)) > 1:
        answers = [process_digit_article(process_punctuation(a)) for a in answers]
        m = process_digit_article(process_punctuation(m))
    recs = [(a, h.answer_confidence, h.answer_id) for a, h in zip(answers, hs, strict=True)]
    accs = []
    for r in recs:
        matches = sum(1 for o in recs if o != r and o[0] == m)
        accs.append(min(1.0, matches / 3.0))
    return float(np.mean(np.array(accs, dtype=np.float64)))


def test_score_matches_brute_force_on_random_data():
    rng = np.random.default_rng(7)
    words = ["red", "Red.", "two", "2", "a dog", "dog", "yes", "yes!", "no", "isnt", "isn't"]
    anns, results = [], {}
    for q in range(400):
        pool = list(rng.choice(words, size=int(rng.integers(1, 4))))
        n = int(rng.choice([10, 10, 3, 1]))
        hs = tuple(
            HumanAnswer(
                str(rng.choice(pool)),
                str(rng.choice(["yes", "maybe"])),
                j + 1 if rng.random() < 0.9 else int(rng.integers(1, 3)),  # some repeated ids
            )
            for j in range(n)
        )
        qt, at = str(rng.choice(["what", "how many", "is"])), str(rng.choice(["a", "b", "c"]))
        anns.append(VQAAnnotation(1000 + q, q // 3, qt, at, hs))
        results[1000 + q] = str(rng.choice([*pool, "cat"]))
    s = vqa_score(anns, results)
    ref = {a.question_id: brute_force_accuracy(results[a.question_id], a.answers) for a in anns}
    for qid, acc in ref.items():
        assert s.per_question[qid] == pytest.approx(100 * acc, abs=1e-12)
    assert s.overall == pytest.approx(100 * np.mean(list(ref.values())), abs=1e-10)
    for key, attr in (("answer_type", s.per_answer_type), ("question_type", s.per_question_type)):
        groups: dict[str, list[float]] = {}
        for a in anns:
            groups.setdefault(getattr(a, key), []).append(ref[a.question_id])
        assert set(attr) == set(groups)
        for t, accs in groups.items():
            assert attr[t] == pytest.approx(100 * np.mean(accs), abs=1e-10), (key, t)
    assert s.n_questions == 400
    # The data is not degenerate: partial credit happens, and so do 0 and 100.
    vals = np.array(list(ref.values()))
    assert (vals == 0).any() and (vals == 1).any() and ((vals > 0) & (vals < 1)).any()


def test_score_refuses_missing_or_extra_answers():
    anns = [
        VQAAnnotation(1, 1, "what", "other", humans("red")),
        VQAAnnotation(2, 1, "is", "yes/no", humans("yes")),
    ]
    with pytest.raises(
        ValueError, match=r"no answer for 1 of the 2 questions \(first: question_id 2\)"
    ):
        vqa_score(anns, {1: "red"})
    with pytest.raises(ValueError, match=r"1 answers to questions not in the annotations .* 3\)"):
        vqa_score(anns, {1: "red", 2: "yes", 3: "no"})
    with pytest.raises(TypeError, match=r"results\[2\]: expected an answer string"):
        vqa_score(anns, {1: "red", 2: 5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="annotations: no questions"):
        vqa_score([], {})


# ------------------------------------------------------------------------------ normalisation


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("Two", "2"),
        ("a dog.", "dog"),
        ("The  Cat", "cat"),
        ("isnt", "isn't"),
        ("dont", "don't"),
        ("couldnt've", "couldn't've"),
        ("couldntve", "couldntve"),  # only one missing apostrophe is restored
        ("yes!", "yes"),
        ("yes .", "yes"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("3.5", "3.5"),  # a decimal point stays
        ("\u0663.\u0665", "\u0663\u0665"),  # ... between ASCII digits only (Python 2's \d)
        ("a.m.", "am"),
        ("1,000", "1000"),  # a digit comma: every mark is deleted, not spaced
        ("black/white", "black white"),  # a mark touching no space becomes one
        ("black / white", "black white"),
        ("x-ray", "x ray"),
        ("(red)", "red"),
        ("it's", "it's"),  # apostrophes are not punctuation here
        ("Im", "im"),  # lower-cased before the table, whose "Im" can never match
        ("somebody'd", "somebodyd"),  # the official table's one backwards entry
        ("an apple\n", "apple"),
        ("yes" + "." * 33, "yes."),  # the official code removes at most 32 periods
    ],
)
def test_normalize_answer(raw, want):
    assert normalize_answer(raw) == want


def test_process_punctuation_reads_the_original_text():
    """Whether a mark is deleted or spaced depends on the answer as given: in "a-b ,c" the
    comma touches a space (deleted), the hyphen does not (spaced)."""
    assert process_punctuation("a-b ,c") == "a b c"
    assert process_punctuation("a-b,c") == "a b c"
    assert process_punctuation("1,5-x") == "15x"  # digit comma: all deleted


# ---------------------------------------------------------------------------------------- files


def sample_files(tmp_path: Path) -> tuple[Path, Path]:
    qs = VQAQuestions(
        [
            VQAQuestion(10, 1, "What colour?"),
            VQAQuestion(11, 1, "Is it?"),
            VQAQuestion(20, 2, "How many?"),
        ],
        data_type="mscoco",
        data_subtype="val2014",
        info={"version": "2.0"},
    )
    anns = [
        VQAAnnotation(10, 1, "what color", "other", humans(*["red"] * 9, "Red"), "red"),
        VQAAnnotation(11, 1, "is", "yes/no", humans(*["yes"] * 10), "yes"),
        VQAAnnotation(20, 2, "how many", "number", humans(*["2"] * 5, *["3"] * 5), "2"),
    ]
    q, a = tmp_path / "q.json", tmp_path / "a.json"
    write_vqa_questions(q, qs)
    write_vqa_annotations(a, anns, data_type="mscoco", data_subtype="val2014")
    return q, a


def test_files_round_trip(tmp_path):
    q, a = sample_files(tmp_path)
    qs = read_vqa_questions(q)
    anns = read_vqa_annotations(a)
    raw_q, raw_a = json.loads(q.read_text()), json.loads(a.read_text())
    assert [x["question_id"] for x in raw_q["questions"]] == [10, 11, 20]
    assert raw_q["data_subtype"] == "val2014" and raw_q["task_type"] == "Open-Ended"
    assert set(raw_a["annotations"][0]["answers"][0]) == {
        "answer",
        "answer_confidence",
        "answer_id",
    }
    assert qs.data_subtype == "val2014" and qs.data_type == "mscoco"
    assert [x.question for x in qs.questions] == ["What colour?", "Is it?", "How many?"]
    assert anns[0].answers[9] == HumanAnswer("Red", "yes", 10)
    assert anns[2].multiple_choice_answer == "2"
    check_vqa_pair(qs, anns, q, a)
    write_vqa_results(tmp_path / "r.json", {20: "two", 10: "red"})
    assert read_vqa_results(tmp_path / "r.json") == {20: "two", 10: "red"}
    assert json.loads((tmp_path / "r.json").read_text()) == [
        {"question_id": 20, "answer": "two"},
        {"question_id": 10, "answer": "red"},
    ]


def test_sample_score_by_hand(tmp_path):
    """q10: humans 9 "red" + 1 "Red" (normalised: all "red"); "red" -> 1.
    q11: ten "yes", machine "no" -> 0.  q20: 5 "2" and 5 "3", machine "two" -> "2": each
    human leaves 4 or 5 matches -> 1.  overall (1 + 0 + 1) / 3 = 66.67%; yes/no 0; number 100."""
    _, a = sample_files(tmp_path)
    s = vqa_score(read_vqa_annotations(a), {10: "red", 11: "no", 20: "two"})
    assert s.overall == pytest.approx(200 / 3, abs=1e-12)
    assert s.per_answer_type == {"other": 100.0, "yes/no": 0.0, "number": 100.0}
    assert s.per_question_type == {"what color": 100.0, "is": 0.0, "how many": 100.0}
    assert s.n_per_answer_type == {"other": 1, "yes/no": 1, "number": 1}


def edit(path: Path, change) -> Path:
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("questions"), r"q\.json: no 'questions'"),
        (lambda d: d["questions"][1].pop("image_id"), r"q\.json: questions\[1\]: no 'image_id'"),
        (
            lambda d: d["questions"][2].update(question_id="20"),
            r"questions\[2\]\.question_id: expected an integer",
        ),
        (
            lambda d: d["questions"][0].update(question_id=True),
            r"questions\[0\]\.question_id: expected an integer",
        ),
        (
            lambda d: d["questions"][0].update(question="  "),
            r"questions\[0\]\.question: expected a non-empty",
        ),
        (
            lambda d: d["questions"][2].update(question_id=10),
            r"questions\[2\]\.question_id: 10 appears twice",
        ),
        (lambda d: d.update(questions={}), r"q\.json: questions: expected a list"),
        (lambda d: d["questions"].append(3), r"questions\[3\]: expected an object"),
    ],
)
def test_bad_questions_file(tmp_path, change, match):
    q, _ = sample_files(tmp_path)
    with pytest.raises(ValueError, match=match):
        read_vqa_questions(edit(q, change))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.pop("annotations"), r"a\.json: no 'annotations'"),
        (lambda d: d["annotations"][1].pop("answer_type"), r"annotations\[1\]: no 'answer_type'"),
        (lambda d: d["annotations"][0].update(answers=[]), r"annotations\[0\]\.answers: empty"),
        (
            lambda d: d["annotations"][2]["answers"][3].pop("answer"),
            r"annotations\[2\]\.answers\[3\]: no 'answer'",
        ),
        (
            lambda d: d["annotations"][2]["answers"][3].update(answer=3),
            r"annotations\[2\]\.answers\[3\]\.answer: expected a string",
        ),
        (
            lambda d: d["annotations"][2]["answers"][0].update(answer_id="1"),
            r"answers\[0\]\.answer_id: expected an integer",
        ),
        (
            lambda d: d["annotations"][1].update(question_id=20),
            r"annotations\[2\]\.question_id: 20 appears twice",
        ),
        (
            lambda d: d["annotations"][1].update(question_type=None),
            r"annotations\[1\]\.question_type: expected",
        ),
    ],
)
def test_bad_annotations_file(tmp_path, change, match):
    _, a = sample_files(tmp_path)
    with pytest.raises(ValueError, match=match):
        read_vqa_annotations(edit(a, change))


def test_bad_json_and_results(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a JSON VQA questions file"):
        read_vqa_questions(bad)
    bad.write_bytes(b'{"questions": "\xff"}')
    with pytest.raises(ValueError, match=r"bad\.json: not a UTF-8 VQA annotations file"):
        read_vqa_annotations(bad)
    bad.write_text('{"question_id": 1, "answer": "x"}')
    with pytest.raises(ValueError, match=r"bad\.json: expected a list, got dict"):
        read_vqa_results(bad)
    bad.write_text('[{"question_id": 1, "answer": "x"}, {"question_id": 1, "answer": "y"}]')
    with pytest.raises(ValueError, match=r"bad\.json: \[1\]\.question_id: 1 is answered twice"):
        read_vqa_results(bad)
    bad.write_text('[{"question_id": 1}]')
    with pytest.raises(ValueError, match=r"bad\.json: \[0\]: no 'answer'"):
        read_vqa_results(bad)
    with pytest.raises(FileNotFoundError):
        read_vqa_results(tmp_path / "absent.json")


def test_check_vqa_pair(tmp_path):
    q, a = sample_files(tmp_path)
    qs, anns = read_vqa_questions(q), read_vqa_annotations(a)
    with pytest.raises(
        ValueError, match=r"a\.json: no annotation for 1 of the 3 questions .* 11\)"
    ):
        check_vqa_pair(qs, [anns[0], anns[2]], q, a)
    moved = VQAAnnotation(20, 5, "how many", "number", anns[2].answers)
    with pytest.raises(
        ValueError, match=r"annotations\[2\] \(question 20\) is on image 5, .* says image 2"
    ):
        check_vqa_pair(qs, [anns[0], anns[1], moved], q, a)
    other = VQAAnnotation(99, 2, "how many", "number", anns[2].answers)
    with pytest.raises(ValueError, match=r"annotations\[3\]\.question_id 99 is not in"):
        check_vqa_pair(qs, [*anns, other], q, a)


# -------------------------------------------------------------------------- the answering loop


@dataclass
class FakeAnswer:
    text: str


class FakeVQA:
    """Answers "<image file stem>:<question>"; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[list[str]]]] = []

    def answer_many(self, images, questions):
        self.calls.append((list(images), [list(q) for q in questions]))
        return [
            [FakeAnswer(f"{Path(i).stem}:{q}") for q in qs]
            for i, qs in zip(images, questions, strict=True)
        ]


def test_answer_questions_groups_by_image(tmp_path):
    qs = VQAQuestions(
        [VQAQuestion(i, image, f"q{i}") for i, image in enumerate([3, 1, 3, 2, 1, 3, 4])],
        data_subtype="val",
    )
    for image in (1, 2, 3, 4):
        (tmp_path / f"{image:04d}.png").write_bytes(b"")
    paths = image_paths(qs, tmp_path, "{image_id:04d}.png")
    fake = FakeVQA()
    got = answer_questions(fake, qs.questions, paths, batch_size=3)
    assert got == {q.question_id: f"{q.image_id:04d}:{q.question}" for q in qs.questions}
    assert list(got) == [q.question_id for q in qs.questions]
    # each image once, in order of first appearance, 3 a call, with all its questions
    assert [[Path(i).stem for i in imgs] for imgs, _ in fake.calls] == [
        ["0003", "0001", "0002"],
        ["0004"],
    ]
    assert fake.calls[0][1] == [["q0", "q2", "q5"], ["q1", "q4"], ["q3"]]


def test_answer_questions_errors(tmp_path):
    qs = VQAQuestions([VQAQuestion(1, 7, "q"), VQAQuestion(2, 8, "q")])
    (tmp_path / "7.png").write_bytes(b"")
    paths = image_paths(qs, tmp_path, "{image_id}.png")
    with pytest.raises(
        FileNotFoundError, match=r"1 of the 2 images are missing \(first: .*8\.png\)"
    ):
        answer_questions(FakeVQA(), qs.questions, paths)
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        answer_questions(FakeVQA(), qs.questions[:1], paths, batch_size=0)

    class Short(FakeVQA):
        def answer_many(self, images, questions):
            return [[] for _ in images]

    with pytest.raises(
        ValueError, match=r"answer_many: 0 answers for the 1 questions about image 7"
    ):
        answer_questions(Short(), qs.questions[:1], paths)


def test_image_paths(tmp_path):
    qs = VQAQuestions([VQAQuestion(1, 42, "q"), VQAQuestion(2, 42, "q")], data_subtype="val2014")
    assert image_paths(qs, "coco/val2014", COCO_PATTERN) == {
        42: Path("coco/val2014/COCO_val2014_000000000042.jpg")
    }
    assert image_paths(qs, "d", "{data_subtype}/{image_id:06d}.png") == {
        42: Path("d/val2014/000042.png")
    }
    for pattern, match in [
        ("{name}.png", "must name {image_id} and may name only"),
        ("{data_subtype}.png", "must name {image_id}"),
        ("{image_id:s}.png", "Unknown format code"),
        ("{image_id.real}.png", "may name only"),
        ("{image_id", "image pattern"),
        ("../{image_id}.png", "would leave d"),
    ]:
        with pytest.raises(ValueError, match=match):
            image_paths(qs, "d", pattern)


def test_scoring_needs_no_torch(tmp_path):
    """The files, the score and the loop import and run with torch blocked."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from mmfast.vqa_eval import HumanAnswer, VQAAnnotation, vqa_score\n"
        "import mmfast.vqa_run\n"
        "a = VQAAnnotation(1, 1, 'how many', 'number', (HumanAnswer('2', 'yes', 1),) * 3)\n"
        "print(vqa_score([a], {1: 'Two'}).overall)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0.0"  # three identical records: each leaves out all three
