"""Run loading and the registries: every model family builds from its JSON config and back,
every one is exportable, bad kinds are named errors, export never needs the training code, and
the CLI's defaults are the library's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mmfast.preprocess import PreprocessConfig  # noqa: E402
from mmfast.tokenizer import Tokenizer  # noqa: E402
from mmfast_export import cli  # noqa: E402
from mmfast_export.checkpoint import config_to_dict, save_weights  # noqa: E402
from mmfast_export.models.encoder import EncoderConfig  # noqa: E402
from mmfast_export.onnx_export import SPECS, UnsupportedModelError, export_run  # noqa: E402
from mmfast_export.runs import (  # noqa: E402
    MODELS,
    ModelKindError,
    build_model,
    load_run,
    model_config,
)
from mmfast_export.shapes import ShapesConfig  # noqa: E402
from mmfast_export.tasks import TASKS  # noqa: E402
from mmfast_export.train import TrainArgs  # noqa: E402

pytestmark = pytest.mark.export

ENC = EncoderConfig(image_size=32, widths=(8, 16), blocks=1)


def tiny_config(kind: str) -> dict[str, object]:
    family = MODELS[kind]
    extra = {"num_answers": 5} if family.task == "vqa" else {}
    return {"kind": kind, **config_to_dict(family.config(vocab_size=20, encoder=ENC, **extra))}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_family_builds_from_its_config_and_back(kind: str) -> None:
    cfg = tiny_config(kind)
    model = build_model(MODELS[kind].task, cfg)
    assert type(model) is MODELS[kind].model
    assert model_config(model) == cfg


def test_every_family_is_exportable_and_every_task_registered() -> None:
    assert sorted(SPECS) == sorted(MODELS)
    assert {f.task for f in MODELS.values()} == set(TASKS)
    assert all(name == t.name for name, t in TASKS.items())


def test_unknown_or_misplaced_kinds_are_named_errors() -> None:
    with pytest.raises(ModelKindError, match=r"unknown model kind 'gpt'.*caption_lstm"):
        build_model("caption", {**tiny_config("caption_lstm"), "kind": "gpt"})
    with pytest.raises(ModelKindError, match="'vqa' is a vqa model, not a caption one"):
        build_model("caption", tiny_config("vqa"))
    with pytest.raises(ModelKindError, match="not a registered model family"):
        model_config(torch.nn.Linear(2, 2))


def _write_run(run: Path, kind: str, task: str) -> None:
    tok = Tokenizer.build(["a red circle"])
    cfg = {**tiny_config("caption_lstm"), "vocab_size": len(tok), "kind": kind}
    save_weights(build_model(task, cfg), run / "model.safetensors")
    tok.save(run / "vocab.txt")
    prep = PreprocessConfig(size=32).to_dict()
    (run / "config.json").write_text(
        json.dumps({"format": 1, "task": task, "model": cfg, "preprocess": prep})
    )


def test_a_kind_without_export_specs_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a family registered for training but not declared for export
    monkeypatch.setitem(MODELS, "caption_new", MODELS["caption_lstm"])
    _write_run(tmp_path, "caption_new", "caption")
    assert load_run(tmp_path).config["model"]["kind"] == "caption_new"
    with pytest.raises(UnsupportedModelError, match=r"'caption_new'.*caption_lstm, caption_"):
        export_run(tmp_path, tmp_path / "bundle")
    assert cli.main_export([str(tmp_path), "--out", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmfast export: ") and err.count("\n") == 1
    # a kind nobody registers: the same kind of one-line error, from run loading
    monkeypatch.delitem(MODELS, "caption_new")
    assert cli.main_export([str(tmp_path), "--out", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    assert "unknown model kind 'caption_new'" in err and err.count("\n") == 1


def test_export_and_run_loading_import_no_training_code() -> None:
    code = (
        "import sys, mmfast_export.onnx_export, mmfast_export.runs\n"
        "bad = [m for m in sys.modules if m.startswith(('mmfast_export.train', "
        "'mmfast_export.tasks'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_defaults_are_the_library_defaults() -> None:
    a = cli._train_parser().parse_args(["vqa", "--data", "d", "--out", "o"])
    got = cli._from_args(TrainArgs, a, widths=(32, 64, 128), progress=True)
    assert asdict(got) == asdict(TrainArgs("vqa", "d", "o"))
    d = cli._data_parser().parse_args(["shapes", "--out", "x"])
    assert cli._from_args(ShapesConfig, d) == ShapesConfig()


@pytest.mark.parametrize(
    "damage,message",
    [
        ({"config.json": "{}"}, "'task' is missing or not a str"),
        ({"config.json": "[1, 2]"}, "not a run's config (not a JSON object)"),
        ({"config.json": "[" * 100_000 + "]" * 100_000}, "not a run's config (RecursionError)"),
        ({"model.safetensors": b"\x00garbage"}, "not a readable safetensors file"),
    ],
)
def test_a_damaged_run_is_a_one_line_export_error(
    damage: dict[str, object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # These escaped as KeyError / SafetensorError / RecursionError tracebacks.
    _write_run(tmp_path, "caption_lstm", "caption")
    for name, data in damage.items():
        path = tmp_path / name
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(str(data))
    assert cli.main_export([str(tmp_path), "--out", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmfast export: ") and err.count("\n") == 1 and message in err


def test_weights_of_another_shape_are_a_one_line_value_error(tmp_path):
    from mmfast_export.checkpoint import load_weights

    small, big = torch.nn.Linear(3, 4), torch.nn.Linear(3, 5)
    save_weights(small, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match=r"w\.safetensors: weights do not fit the model \(") as e:
        load_weights(big, tmp_path / "w.safetensors")
    assert "\n" not in str(e.value) and "size mismatch" in str(e.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be at least 1, got 0"),  # trained nothing
        ("batch_size", 2.5, "batch_size must be an integer, got 2.5"),
        ("threads", -1, "threads must be at least 1, got -1"),
        ("stop_after", 0, "stop_after must be at least 1, got 0"),
        ("image_size", 7, "image_size must be 8..4096 px, got 7"),
        ("widths", (8, 0), "widths must be positive channel counts, got (8, 0)"),
        ("widths", (), "widths must be positive channel counts, got ()"),
        ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
        ("weight_decay", float("nan"), "weight_decay must be a finite number >= 0, got nan"),
        ("length_penalty", -0.5, "length_penalty must be a finite number >= 0, got -0.5"),
        ("warmup", 2.0, "warmup must be in [0, 1], got 2.0"),
    ],
)
def test_bad_train_args_name_the_field(field, value, message):
    # the same checks as `mmfast train`'s options, for callers of the Python API
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TrainArgs("caption", "data", "out", **{field: value})
