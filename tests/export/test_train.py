"""Training on a tiny dataset: loss drops, reproducible, resume == uninterrupted, checkpoints
without pickle, the evaluation runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from mmfast_export.cli import main_train  # noqa: E402
from mmfast_export.decoding import greedy  # noqa: E402
from mmfast_export.runs import load_run  # noqa: E402
from mmfast_export.train import TrainArgs, train  # noqa: E402

pytestmark = pytest.mark.export

TINY = {"widths": (8, 16, 32), "progress": False, "threads": 2, "lr": 3e-3}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_caption_lstm_learns_resumes_and_round_trips(tiny_shapes: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    s = train(TrainArgs("caption", str(tiny_shapes), str(full), epochs=4, batch_size=16, **TINY))
    hist = json.loads((full / "config.json").read_text())["progress"]["history"]
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]
    assert 0.0 <= s["test"]["bleu4"] <= 1.0 and s["test"]["cider"] >= 0.0
    assert sorted(p.name for p in full.iterdir() if p.suffix in {".pkl", ".pt", ".pth"}) == []

    # interrupted after 2 epochs, then resumed: the same weights as the uninterrupted run
    part = tmp_path / "part"
    kw = {"epochs": 4, "batch_size": 16, "stop_after": 2, **TINY}
    train(TrainArgs("caption", str(tiny_shapes), str(part), **kw))
    after2 = _weights(part)
    again = tmp_path / "again"
    train(TrainArgs("caption", str(tiny_shapes), str(again), **kw))
    assert _same(after2, _weights(again))  # reproducible
    train(
        TrainArgs(
            "caption", str(tiny_shapes), str(part), epochs=4, batch_size=16, resume=True, **TINY
        )
    )
    assert _same(_weights(part), _weights(full))
    assert not _same(after2, _weights(full))

    # checkpoint round trip: reload and decode the same captions as the saved predictions
    model, cfg, tok = load_run(full)
    assert cfg["preprocess"]["size"] == 32 and cfg["model"]["kind"] == "caption_lstm"
    preds = json.loads((full / "predictions_test.json").read_text())
    from mmfast.preprocess import PreprocessConfig, load_rgb, preprocess

    coco = json.loads((tiny_shapes / "captions_test.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    prep = PreprocessConfig.from_dict(cfg["preprocess"])
    x = torch.stack(
        [
            torch.from_numpy(
                preprocess(load_rgb(tiny_shapes / "images" / names[p["image_id"]]), prep)
            )
            for p in preds
        ]
    )  # numpy/Pillow preprocessing, as in the runtime
    res = greedy(model, model.encode(x), model.cfg.max_len - 1)
    assert [tok.decode(t) for t in res.tokens] == [p["caption"] for p in preds]


def test_caption_transformer_trains(tiny_shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "tr"
    rc = main_train(
        [
            "caption",
            "--data",
            str(tiny_shapes),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--decoder",
            "transformer",
            "--batch-size",
            "16",
            "--widths",
            "8,16,32",
            "--no-progress",
            "--beam",
            "2",
            "--lr",
            "3e-3",
        ]
    )
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    hist = cfg["progress"]["history"]
    assert cfg["model"]["kind"] == "caption_transformer"
    assert hist[-1]["train_loss"] < 0.8 * hist[0]["train_loss"]


def test_retrieval_trains(tiny_shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "ret"
    s = train(TrainArgs("retrieval", str(tiny_shapes), str(out), epochs=3, batch_size=16, **TINY))
    hist = json.loads((out / "config.json").read_text())["progress"]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    t = s["test"]
    assert 0.0 <= t["r@1"] <= t["r@5"] <= t["r@10"] <= 1.0
    assert "rerank_r@1" in t and "allcaps_r@1" in t


def test_vqa_trains(tiny_shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "vqa"
    s = train(TrainArgs("vqa", str(tiny_shapes), str(out), epochs=3, batch_size=16, **TINY))
    hist = json.loads((out / "config.json").read_text())["progress"]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert 0.0 <= s["test"]["accuracy"] <= 1.0
    answers = (out / "answers.txt").read_text().split()
    assert "yes" in answers and "no" in answers


def test_bad_arguments_fail_clearly(tmp_path: Path) -> None:
    assert main_train(["caption", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
