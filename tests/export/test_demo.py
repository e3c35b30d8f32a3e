"""The README's demo path end to end, on a tiny dataset: data -> training -> export -> runtime."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.export, pytest.mark.slow]
pytest.importorskip("torch")


def test_demo_runs_end_to_end(tmp_path, capsys):
    from mmfast_export.demo import main

    args = ["--workdir", str(tmp_path), "--num-images", "60", "--epochs", "1", "--hf-seconds", "3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for step in (
        "1. data",
        "2. training",
        "3. export",
        "4a. captions",
        "4b. text search",
        "4c. questions",
        "4d. official VQA v2 accuracy",
        "5. latency",
        "6. bring your own model",
    ):
        assert f"== {step}" in out
    # (token identity with PyTorch is asserted on sharpened models in test_onnx_export.py; a
    # 1-epoch model can have near-tied logits, so here only the table's presence is checked)
    assert "caption, 32 images, greedy" in out
    assert "questions: overall" in out  # the official score was computed, not skipped
    # the pictures: one attention grid, one contact sheet, printed with where they are
    from PIL import Image

    for name, said in (
        ("attention.png", "where each word looked"),
        ("search.png", "contact sheet"),
    ):
        path = tmp_path / "pictures" / name
        assert f"{said}" in out and str(path) in out
        with Image.open(path) as im:
            assert im.format == "PNG"
    # a second run reuses everything it made
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "reusing dataset" in again and "reusing bundle" in again
    assert "reusing fine-tuned model" in again
