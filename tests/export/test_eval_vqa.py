"""The shapes data in the VQA v2 format (mmfast_export.vqa_v2), and `mmfast eval vqa` end to
end on it with a tiny exported VQA bundle (untrained): its results file holds the pipeline's
answers, its printed score is the official score of that file, and bad input is one line."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

from mmfast.cli import main  # noqa: E402
from mmfast.preprocess import PreprocessConfig  # noqa: E402
from mmfast.tokenizer import Tokenizer  # noqa: E402
from mmfast.vqa import VQA  # noqa: E402
from mmfast.vqa_eval import (  # noqa: E402
    check_vqa_pair,
    normalize_answer,
    read_vqa_annotations,
    read_vqa_questions,
    read_vqa_results,
    vqa_score,
)
from mmfast_export.checkpoint import save_weights  # noqa: E402
from mmfast_export.onnx_export import export_run  # noqa: E402
from mmfast_export.runs import build_model  # noqa: E402
from mmfast_export.shapes import SPLITS  # noqa: E402
from mmfast_export.vqa_v2 import (  # noqa: E402
    FOLDER,
    IMAGE_PATTERN,
    annotations_file,
    questions_file,
    write_vqa_v2,
)


def v2_files(data, split):
    return data / FOLDER / questions_file(split), data / FOLDER / annotations_file(split)


def own_questions(data, split):
    return json.loads((data / f"vqa_{split}.json").read_text())["questions"]


@pytest.mark.parametrize("split", SPLITS)
def test_vqa_v2_files_hold_the_shapes_questions(tiny_shapes, split):
    q, a = v2_files(tiny_shapes, split)
    qs, anns = read_vqa_questions(q), read_vqa_annotations(a)
    check_vqa_pair(qs, anns, q, a)
    own = own_questions(tiny_shapes, split)
    assert [(x.question_id, x.image_id, x.question) for x in qs.questions] == [
        (r["question_id"], r["image_id"], r["question"]) for r in own
    ]
    assert (qs.data_type, qs.data_subtype, qs.task_type) == ("shapes", split, "Open-Ended")
    assert all(
        (
            tiny_shapes / "images" / IMAGE_PATTERN.format(image_id=x.image_id, data_subtype=split)
        ).is_file()
        for x in qs.questions
    )
    for r, ann in zip(own, anns, strict=True):
        truth = normalize_answer(r["answer"])
        kind = "yes/no" if truth in ("yes", "no") else "number" if truth.isdigit() else "other"
        assert (ann.question_type, ann.answer_type) == (r["type"], kind)
        assert sorted(h.answer_id for h in ann.answers) == list(range(1, 11))
        texts = [h.answer for h in ann.answers]
        assert ann.multiple_choice_answer == Counter(texts).most_common(1)[0][0]
        # every human either gives the answer (in some spelling) or a wrong one of its kind
        for t in texts:
            n = normalize_answer(t)
            assert n == truth or (n.isdigit() == truth.isdigit() and n != ""), (t, r["answer"])


def test_vqa_v2_humans_vary_and_score_is_not_trivial(tiny_shapes):
    """On the train split: spellings that only normalisation equates are common, some humans
    are wrong, and the true answers (as the shapes data writes them) score high but below 100;
    answering "yes" to everything scores on yes/no questions only."""
    own = own_questions(tiny_shapes, "train")
    anns = read_vqa_annotations(v2_files(tiny_shapes, "train")[1])
    truth = {r["question_id"]: r["answer"] for r in own}
    humans = [(h.answer, truth[a.question_id]) for a in anns for h in a.answers]
    respelt = sum(t != ans and normalize_answer(t) == normalize_answer(ans) for t, ans in humans)
    wrong = sum(normalize_answer(t) != normalize_answer(ans) for t, ans in humans)
    assert 0.1 < respelt / len(humans) < 0.4
    assert 0.02 < wrong / len(humans) < 0.25
    perfect = vqa_score(anns, truth)
    assert 90 < perfect.overall < 100
    yes = vqa_score(anns, {q: "yes" for q in truth})
    assert yes.per_answer_type["number"] == 0 and yes.per_answer_type["other"] == 0
    assert 20 < yes.per_answer_type["yes/no"] < 80


def test_vqa_v2_files_are_deterministic(tiny_shapes, tmp_path):
    for split in SPLITS:
        write_vqa_v2(tmp_path, split, own_questions(tiny_shapes, split), seed=3)  # fixture's seed
        for name in (questions_file(split), annotations_file(split)):
            assert (tmp_path / FOLDER / name).read_bytes() == (
                tiny_shapes / FOLDER / name
            ).read_bytes()
    write_vqa_v2(tmp_path / "other", "test", own_questions(tiny_shapes, "test"), seed=4)
    assert (tmp_path / "other" / FOLDER / annotations_file("test")).read_bytes() != (
        tiny_shapes / FOLDER / annotations_file("test")
    ).read_bytes()


# Raw spellings on purpose: the score normalises the bundle's answers ("Two" -> "2").
ANSWERS = ["yes", "No", "two", "Three.", "1", "red", "a blue", "circle", "large", "zero"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_shapes):
    run = tmp_path_factory.mktemp("vqa_run")
    tok = Tokenizer.build([r["question"] for r in own_questions(tiny_shapes, "train")])
    cfg = {
        "kind": "vqa",
        "vocab_size": len(tok),
        "encoder": {"image_size": 32, "widths": [8, 16], "blocks": 1},
        "num_answers": len(ANSWERS),
        "dim": 32,
        "text_layers": 1,
        "heads": 2,
        "glimpses": 2,
        "att": 16,
        "max_len": 16,
        "dropout": 0.0,
    }
    torch.manual_seed(0)
    save_weights(build_model("vqa", cfg), run / "model.safetensors")
    tok.save(run / "vocab.txt")
    (run / "answers.txt").write_text("\n".join(ANSWERS) + "\n")
    config = {
        "format": 1,
        "task": "vqa",
        "model": cfg,
        "preprocess": PreprocessConfig(size=32).to_dict(),
        "vocab": "vocab.txt",
    }
    (run / "config.json").write_text(json.dumps(config))
    out = tmp_path_factory.mktemp("vqa_bundle")
    export_run(run, out)
    return out


def cli_args(bundle, data, split="test", **over):
    q, a = v2_files(data, split)
    args = {
        "--model": bundle,
        "--questions": q,
        "--annotations": a,
        "--images": data / "images",
        "--image-pattern": IMAGE_PATTERN,
        "--batch-size": 3,
        "--threads": 1,
        **over,
    }
    return ["eval", "vqa", "--quiet"] + [str(x) for kv in args.items() for x in kv]


def test_eval_vqa_cli(bundle, tiny_shapes, tmp_path, capsys):
    res, js = tmp_path / "results.json", tmp_path / "report.json"
    assert main(cli_args(bundle, tiny_shapes, **{"--results": res, "--json": js})) == 0
    printed = capsys.readouterr().out
    q, a = v2_files(tiny_shapes, "test")
    qs = read_vqa_questions(q)
    results = read_vqa_results(res)
    assert list(results) == [x.question_id for x in qs.questions]
    # The answers are the pipeline's, one question at a time.
    v = VQA.load(bundle, threads=1)
    for x in qs.questions:
        path = (
            tiny_shapes / "images" / IMAGE_PATTERN.format(image_id=x.image_id, data_subtype="test")
        )
        assert results[x.question_id] == v.answer(str(path), x.question).text
    assert len(set(results.values())) > 1  # (an untrained model, but not a constant one)
    # The printed and JSON scores are the official score of the results file.
    s = vqa_score(read_vqa_annotations(a), results)
    report = json.loads(js.read_text())
    assert report["overall"] == pytest.approx(s.overall, abs=1e-12)
    assert report["per_answer_type"] == pytest.approx(s.per_answer_type, abs=1e-12)
    assert re.search(rf"^overall +{s.overall:.2f}$", printed, re.M), printed
    for t, acc in s.per_answer_type.items():
        n = s.n_per_answer_type[t]
        assert re.search(rf"^{re.escape(t)} +{acc:.2f}  \({n}\)$", printed, re.M), printed
    for t, acc in s.per_question_type.items():
        assert re.search(rf"^  {t} +{acc:.2f}  \(", printed, re.M), printed
    assert f"test: {len(qs.questions)} questions" in printed


def test_eval_vqa_limit(bundle, tiny_shapes, tmp_path, capsys):
    res = tmp_path / "results.json"
    assert main(cli_args(bundle, tiny_shapes, **{"--results": res, "--limit": 5})) == 0
    ids = [x.question_id for x in read_vqa_questions(v2_files(tiny_shapes, "test")[0]).questions]
    assert list(read_vqa_results(res)) == ids[:5]
    assert "test: 5 questions" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("corrupt annotations", r"bad\.json: not a JSON VQA annotations file"),
        ("other split's annotations", r"annotations\[0\]\.question_id \d+ is not in"),
        ("COCO pattern", r"of the \d+ images are missing \(first: .*COCO_test_0+\d+\.jpg\)"),
        ("bad pattern", r"image pattern '\{nope\}\.png': must name \{image_id\}"),
        ("limit 0", r"--limit: expected a positive int, got 0"),
        ("no image folder", r"--images .*absent is not a directory"),
    ],
)
def test_eval_vqa_bad_input_is_one_line(bundle, tiny_shapes, tmp_path, capsys, case, match):
    bad = tmp_path / "bad.json"
    bad.write_text('{"annotations": [')
    over = {
        "corrupt annotations": {"--annotations": bad},
        "other split's annotations": {"--annotations": v2_files(tiny_shapes, "val")[1]},
        "COCO pattern": {"--image-pattern": "COCO_{data_subtype}_{image_id:012d}.jpg"},
        "bad pattern": {"--image-pattern": "{nope}.png"},
        "limit 0": {"--limit": 0},
        "no image folder": {"--images": tmp_path / "absent"},
    }[case]
    assert main(cli_args(bundle, tiny_shapes, **over)) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmfast eval vqa: ") and err.count("\n") == 1, err
    assert re.search(match, err), err
