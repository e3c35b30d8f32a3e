"""`mmfast data vqa-v2`: official VQA v2 files -> mmfast's training questions (one target
answer per question: the humans' most common), checked against the shapes generator's own
``vqa_train.json`` (the truth the simulated humans were drawn from)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.export
pytest.importorskip("torch")

from mmfast.vqa_eval import read_vqa_annotations  # noqa: E402
from mmfast_export.cli import main_data  # noqa: E402
from mmfast_export.shapes import ShapesConfig, write_dataset  # noqa: E402
from mmfast_export.vqa_v2 import annotations_file, questions_file  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    write_dataset(ShapesConfig(num_images=60), out, workers=1)
    return out


def test_converted_questions_match_the_generator(data: Path, tmp_path: Path) -> None:
    v2 = data / "vqa_v2"
    out = tmp_path / "vqa_train.json"
    rc = main_data(
        [
            "vqa-v2",
            "--questions",
            str(v2 / questions_file("train")),
            "--annotations",
            str(v2 / annotations_file("train")),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    got = json.loads(out.read_text())["questions"]
    truth = json.loads((data / "vqa_train.json").read_text())["questions"]
    assert [(q["question_id"], q["image_id"], q["question"]) for q in got] == [
        (q["question_id"], q["image_id"], q["question"]) for q in truth
    ]
    anns = {a.question_id: a for a in read_vqa_annotations(v2 / annotations_file("train"))}
    agree = 0
    for g, t in zip(got, truth, strict=True):
        humans = Counter(h.answer for h in anns[g["question_id"]].answers)
        top = humans.most_common(1)[0][1]
        assert humans[g["answer"]] == top  # the target is a most common human answer
        assert g["type"] == t["type"]
        agree += g["answer"] == t["answer"]
    # most humans type the generator's answer as written: most targets are the truth itself
    assert agree >= 0.8 * len(got)


def test_files_of_different_questions_are_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v2 = data / "vqa_v2"
    argv = [
        "vqa-v2",
        "--questions",
        str(v2 / questions_file("train")),
        "--annotations",
        str(v2 / annotations_file("test")),
        "--out",
        str(tmp_path / "x.json"),
    ]
    assert main_data(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "question_id" in err
    assert not (tmp_path / "x.json").exists()
