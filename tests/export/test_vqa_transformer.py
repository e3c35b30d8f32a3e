"""The joint-Transformer VQA model (kind ``vqa_transformer``): its bundle answers as PyTorch
does through the unchanged runtime, its attention is a distribution over the regions, question
padding changes nothing, and ``mmfast train vqa --model`` picks it (or refuses a bad value)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

from mmfast.bundle import load_bundle  # noqa: E402
from mmfast.preprocess import PreprocessConfig, preprocess_batch  # noqa: E402
from mmfast.tokenizer import Tokenizer  # noqa: E402
from mmfast.vqa import VQA  # noqa: E402
from mmfast_export import cli  # noqa: E402
from mmfast_export.checkpoint import save_weights  # noqa: E402
from mmfast_export.field_checks import FieldError  # noqa: E402
from mmfast_export.models.encoder import EncoderConfig  # noqa: E402
from mmfast_export.models.vqa_transformer import (  # noqa: E402
    VQATransformer,
    VQATransformerConfig,
)
from mmfast_export.onnx_export import export_run  # noqa: E402
from mmfast_export.runs import build_model, load_run  # noqa: E402
from mmfast_export.tasks.vqa import VQA_MODELS  # noqa: E402
from mmfast_export.train import TrainArgs  # noqa: E402

WORDS = "is the red blue green circle square left right of above below what colour shape".split()
ANSWERS = ["blue", "circle", "green", "no", "red", "square", "yes", "1", "2"]
# 32 px, two stride-2 stages: an 8x8 CNN grid, merged 2x2 into 4x4 = 16 image tokens
CFG = {
    "kind": "vqa_transformer",
    "num_answers": len(ANSWERS),
    "encoder": {"image_size": 32, "widths": [8, 16], "blocks": 1},
    "dim": 32,
    "heads": 2,
    "layers": 2,
    "max_len": 16,
    "dropout": 0.0,
    "merge": 2,
}
# questions of different lengths, so that answer_many pads all but the longest
QUESTIONS = [
    "is the red circle to the left of the blue square ?",
    "what colour ?",
    "what shape is the green circle",
    "below",
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[VQATransformer, Tokenizer, Path]:
    run = tmp_path_factory.mktemp("vqa_tf")
    tok = Tokenizer.build([" ".join(WORDS)])
    cfg = {**CFG, "vocab_size": len(tok)}
    torch.manual_seed(2)
    model = build_model("vqa", cfg)
    assert isinstance(model, VQATransformer)
    # untrained LayerNorm/embedding defaults give near-uniform attention; spread the weights
    # so that a wrong mask or a wrong attention row would show in the comparison
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_weights(model, run / "model.safetensors")
    tok.save(run / "vocab.txt")
    (run / "answers.txt").write_text("\n".join(ANSWERS) + "\n")
    prep = PreprocessConfig(size=32)
    (run / "config.json").write_text(
        json.dumps(
            {
                "format": 1,
                "task": "vqa",
                "model": cfg,
                "preprocess": prep.to_dict(),
                "vocab": "vocab.txt",
            }
        )
    )
    out = tmp_path_factory.mktemp("vqa_tf_bundle")
    export_run(run, out)
    model.eval()
    return model, tok, out


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (int(rng.integers(20, 48)), int(rng.integers(20, 48)), 3), np.uint8)
        for _ in range(n)
    ]


def test_bundle_answers_as_pytorch(bundle: tuple[VQATransformer, Tokenizer, Path]) -> None:
    model, tok, path = bundle
    m = load_bundle(path).manifest
    assert m.kind == "vqa_transformer" and m.task == "vqa"
    imgs = _images(3, seed=5)
    qs = [QUESTIONS, QUESTIONS[1:3], QUESTIONS[::-1]]
    got = VQA.load(path, threads=1).answer_many(imgs, qs)  # padded to each batch's longest
    prep = PreprocessConfig(size=32)
    with torch.no_grad():
        regions = model.encode_image(torch.from_numpy(preprocess_batch(imgs, prep)))  # (3, R, D)
        for i, questions in enumerate(qs):
            for j, q in enumerate(questions):
                # one question alone, unpadded
                logits, att = model.answer(regions[i : i + 1], torch.tensor([tok.encode(q)]))
                p = torch.softmax(logits[0], -1)
                a = got[i][j]
                assert a.text == ANSWERS[int(p.argmax())]
                assert a.confidence == pytest.approx(float(p.max()), abs=1e-5)
                assert a.attention.shape == (1, model.num_regions) == (1, 16)
                np.testing.assert_allclose(a.attention, att[0].numpy(), atol=1e-5)
                np.testing.assert_allclose(a.attention.sum(-1), 1.0, atol=1e-5)


def test_attention_rows_are_distributions_over_the_regions() -> None:
    torch.manual_seed(0)
    enc = EncoderConfig(image_size=32, widths=(8, 16), blocks=1)
    model = VQATransformer(VQATransformerConfig(30, 5, enc, dim=32, heads=4, layers=2)).eval()
    with torch.no_grad():
        regions = model.encode_image(torch.randn(3, 3, 32, 32))  # (3, 16, 32)
        questions = torch.tensor([[5, 6, 7, 8], [5, 9, 0, 0], [7, 0, 0, 0]])
        logits, att = model.answer(regions, questions)
    assert logits.shape == (3, 5) and att.shape == (3, 1, 16)
    assert (att >= 0).all()
    torch.testing.assert_close(att.sum(-1), torch.ones(3, 1))


def test_question_padding_changes_nothing() -> None:
    # the key padding mask: trailing <pad> tokens must not move the answer or the attention
    torch.manual_seed(1)
    enc = EncoderConfig(image_size=32, widths=(8, 16), blocks=1)
    model = VQATransformer(VQATransformerConfig(30, 5, enc, dim=32, heads=2, layers=2)).eval()
    with torch.no_grad():
        regions = model.encode_image(torch.randn(1, 3, 32, 32))
        short = model.answer(regions, torch.tensor([[5, 6, 7]]))
        padded = model.answer(regions, torch.tensor([[5, 6, 7, 0, 0, 0, 0]]))
    for a, b in zip(short, padded, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_merge_must_divide_the_grid() -> None:
    enc = EncoderConfig(image_size=48, widths=(8, 16), blocks=1)  # a 12x12 grid
    assert VQATransformer(VQATransformerConfig(30, 5, enc, dim=16, merge=3)).num_regions == 16
    with pytest.raises(ValueError, match="merge must divide the CNN's 12x12 region grid, got 5"):
        VQATransformer(VQATransformerConfig(30, 5, enc, dim=16, merge=5))


def test_train_cli_trains_the_transformer(tiny_shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "vqa_tf"
    argv = ["vqa", "--data", str(tiny_shapes), "--out", str(out), "--model", "transformer"]
    tiny = ["--epochs", "2", "--batch-size", "16", "--widths", "8,16", "--no-progress"]
    assert cli.main_train(argv + tiny + ["--lr", "3e-3", "--threads", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["kind"] == "vqa_transformer"
    assert cfg["train_args"]["model"] == "transformer"
    hist = cfg["progress"]["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    assert {"accuracy", "accuracy_relation", "accuracy_count"} <= set(metrics)
    assert isinstance(load_run(out).model, VQATransformer)  # the checkpoint loads back


def test_bad_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["vqa", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "gpt"]
    with pytest.raises(SystemExit) as e:
        cli.main_train(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--model: invalid choice: 'gpt'" in err and "'attention', 'transformer'" in err
    # the library call says it too, before reading any data
    with pytest.raises(FieldError, match="model must be one of attention, transformer, got 'gpt'"):
        TrainArgs("vqa", str(tmp_path), str(tmp_path / "o"), model="gpt")
    assert not (tmp_path / "o").exists()


def test_cli_choices_are_the_tasks_models() -> None:
    p = cli._train_parser()
    (action,) = [a for a in p._actions if a.dest == "model"]
    assert tuple(action.choices or ()) == VQA_MODELS
    assert action.default == TrainArgs("vqa", "d", "o").model == VQA_MODELS[0]
