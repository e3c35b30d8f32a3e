"""Bad input to the retriever, VQA and the PyTorch side's commands, on exported (tiny,
untrained) bundles: typed errors naming the argument or the file, one CLI line with status 2,
nothing silently wrong (see ../test_pipeline_errors.py for the captioner and the rules)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

from test_onnx_retrieval_vqa import images  # noqa: E402
from test_onnx_retrieval_vqa import retrieval as retrieval  # noqa: E402 (a fixture)
from test_onnx_retrieval_vqa import vqa as vqa  # noqa: E402 (a fixture)
from test_pipeline_errors import one_error_line, tampered  # noqa: E402

from mmfast.bundle import BundleFormatError, BundleGraphError, BundleMismatchError  # noqa: E402
from mmfast.retriever import Retriever  # noqa: E402
from mmfast.vqa import VQA  # noqa: E402

IMG = images(1, seed=4)[0]


@pytest.fixture(scope="module")
def indexed(retrieval, tmp_path_factory):
    """A retriever bundle and an index of 3 images saved with their regions."""
    *_, bundle = retrieval
    r = Retriever.load(bundle, threads=1)
    r.add_images(images(3, seed=7), ids=["a", "b", "c"])
    d = tmp_path_factory.mktemp("index")
    r.save(d)
    return bundle, d


# --------------------------------------------------------------------------- Retriever


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": True}, "k: expected a positive int, got True"),
        ({"k": 2.0}, "k: expected a positive int, got 2.0"),
        ({"rerank": True, "rerank_k": True}, "rerank_k: expected a positive int, got True"),
        ({"rerank": True, "rerank_k": -5}, "rerank_k: expected a positive int, got -5"),
    ],
)
def test_search_refuses_a_bad_count(kwargs, message, indexed):
    bundle, d = indexed
    with pytest.raises(ValueError, match=message):
        Retriever.load(bundle, index=d).search("a red circle", **kwargs)


def test_search_takes_numpy_integers(indexed):
    bundle, d = indexed
    ids, _ = Retriever.load(bundle, index=d).search("a red circle", k=np.int64(2))
    assert len(ids) == 2


def test_add_images_is_all_or_nothing(retrieval, tmp_path):
    *_, bundle = retrieval
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = Retriever.load(bundle)
    with pytest.raises(ValueError, match=r"images\[1\]: cannot read"):
        r.add_images([IMG, bad], batch_size=1)
    assert len(r.index) == 0 and r._regions == {}  # the first batch was not kept
    r.add_images([IMG], ids=["x"])
    with pytest.raises(ValueError, match=r"ids: already in the index or repeated: \['x'\]"):
        r.add_images([IMG, bad], ids=["y", "x"])  # refused before any image is read


def test_add_images_takes_one_path_and_refuses_a_non_list(retrieval, tmp_path):
    *_, bundle = retrieval
    p = tmp_path / "one.png"
    Image.fromarray(IMG).save(p)
    r = Retriever.load(bundle)
    r.add_images(str(p))  # one image, not one per character of its path
    assert r.index.ids == [str(p)]
    with pytest.raises(TypeError, match="images: expected an image or a sequence"):
        r.add_images(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size: expected a positive int, got True"):
        r.add_images([IMG], batch_size=True)


REGIONS = [  # id, regions.npy written over the saved one, message
    ("garbage", b"garbage", "corrupt regions"),
    ("region size", np.ones((3, 64, 5), np.float16), r"regions \(3, 64, 5\) float16, expected"),
    ("wrong count", np.ones((2, 64, 32), np.float16), r"regions \(2, 64, 32\) float16, expected"),
    ("float64", np.ones((3, 64, 32)), r"regions \(3, 64, 32\) float64, expected \(3, 64, 32\)"),
    ("1-d", np.ones(3, np.float16), r"regions \(3,\) float16, expected"),
    ("NaN", np.full((3, 64, 32), np.nan, np.float16), "regions contain NaN or inf"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "message"), [c[1:] for c in REGIONS],
                         ids=[c[0] for c in REGIONS])  # fmt: skip
def test_corrupt_regions_are_refused_at_load(data, message, indexed, tmp_path, capsys):
    bundle, saved = indexed
    d = tmp_path / "ix"
    shutil.copytree(saved, d)
    if isinstance(data, bytes):
        (d / "regions.npy").write_bytes(data)
    else:
        np.save(d / "regions.npy", data)
    with pytest.raises(ValueError, match=message):
        Retriever.load(bundle, index=d)
    line = one_error_line(capsys, ["search", "--index", str(d), "a red circle", "--rerank"])
    assert line.startswith(f"mmfast search: {d / 'regions.npy'}: ")


def test_saving_without_regions_removes_an_older_indexs_regions(indexed, tmp_path):
    bundle, with_regions = indexed
    other = tmp_path / "other"
    r = Retriever.load(bundle)
    r.add_images(images(3, seed=8), ids=["x", "y", "z"])
    r.save(other)
    (other / "regions.npy").unlink()  # e.g. written by an older mmfast
    target = tmp_path / "target"
    shutil.copytree(with_regions, target)
    Retriever.load(bundle, index=other).save(target)  # over an index with regions
    r2 = Retriever.load(bundle, index=target)
    assert r2.index.ids == ["x", "y", "z"]
    with pytest.raises(ValueError, match="rerank: the index was saved without regions"):
        r2.search("a red circle", rerank=True)  # not the other images' regions


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # json.dumps writes NaN / Infinity; neither is JSON: the manifest is refused as such
        ("logit_scale", float("nan"), "NaN is not a JSON value"),
        ("logit_scale", float("inf"), "Infinity is not a JSON value"),
        ("max_len", 0, "'retrieval': max_len must be at least 1, got 0"),
    ],
)
def test_retrieval_manifest_values_are_checked(key, value, message, retrieval, tmp_path):
    *_, bundle = retrieval
    b = tampered(bundle, tmp_path / "b", manifest=lambda m: m["retrieval"].__setitem__(key, value))
    with pytest.raises(BundleFormatError, match=message):
        Retriever.load(b)


def test_cli_index_build_errors_are_one_line(retrieval, tmp_path, capsys):
    *_, bundle = retrieval
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(IMG).save(folder / "a.png")
    (folder / "folder.png").mkdir()  # not an image file: skipped, not an error
    build = ["index", "build", "--model", str(bundle), "--images", str(folder), "--quiet"]
    assert main_ok(capsys, [*build, "--out", str(tmp_path / "ix")]).startswith("indexed 1 images")
    under_a_file = folder / "a.png" / "ix"
    line = one_error_line(capsys, [*build, "--out", str(under_a_file)])
    assert line == f"mmfast index build: [Errno 20] Not a directory: '{under_a_file}'"
    garbage = tampered(bundle, tmp_path / "g", {"image_tower.onnx": b"\x08\x07garbage"})
    out = ["--out", str(tmp_path / "ix2")]
    line = one_error_line(capsys, ["index", "build", "--model", str(garbage), *build[4:], *out])
    assert "image_tower.onnx: ONNX Runtime cannot load it" in line


def test_cli_index_build_ends_its_progress_line_before_an_error(retrieval, tmp_path, capsys):
    from mmfast.cli import main

    *_, bundle = retrieval
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(IMG).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image")
    out = ["--out", str(tmp_path / "ix"), "--batch-size", "1"]
    assert main(["index", "build", "--model", str(bundle), "--images", str(folder), *out]) == 2
    lines = capsys.readouterr().err.split("\n")
    assert lines[-2].startswith("mmfast index build: images[1]: cannot read") and lines[-1] == ""
    assert lines[0] == "\rindexed 1/2"


def main_ok(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    from mmfast.cli import main

    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


# --------------------------------------------------------------------------------- VQA


def _vocab_plus(bundle: Path, extra: int) -> bytes:
    words = (bundle / "vocab.txt").read_text().splitlines()
    return ("\n".join(words + [f"x{i}" for i in range(extra)]) + "\n").encode()


def _without_vocab_size(m: dict) -> None:
    del m["config"]["vocab_size"]


VQA_BROKEN = [  # id, files, manifest edit, error, message
    ("one answer for 9 logits", {"answers.txt": b"blue\n"}, None, BundleMismatchError,
     r"answer_head\.onnx: 'logits' has size 9 on axis -1, but answers\.txt has 1 answers"),
    ("14 answers for 9 logits", {"answers.txt": b"a\n" * 14}, None, BundleMismatchError,
     r"'logits' has size 9 on axis -1, but answers\.txt has 14 answers"),
    ("no answers", {"answers.txt": b""}, None, BundleMismatchError, r"answers\.txt: no answers"),
    ("answers not UTF-8", {"answers.txt": b"\xff\xfe\n" * 9}, None, BundleFormatError,
     r"answers\.txt: not UTF-8 text"),
    ("vocabulary past the embedding table", {"vocab.txt": "+50"}, None, BundleMismatchError,
     r"vocab\.txt: 69 tokens, the model's config\.vocab_size is 19"),
    ("garbage answer head", {"answer_head.onnx": b"\x08\x07garbage"}, None, BundleGraphError,
     r"answer_head\.onnx: ONNX Runtime cannot load it"),
]  # fmt: skip


@pytest.mark.parametrize(("files", "edit", "error", "message"), [c[1:] for c in VQA_BROKEN],
                         ids=[c[0] for c in VQA_BROKEN])  # fmt: skip
def test_a_broken_vqa_bundle_is_refused_at_load(files, edit, error, message, vqa, tmp_path, capsys):
    *_, bundle, _ = vqa
    files = {k: _vocab_plus(bundle, 50) if v == "+50" else v for k, v in files.items()}
    b = tampered(bundle, tmp_path / "b", files, edit)
    with pytest.raises(error, match=message):
        VQA.load(b)
    img = tmp_path / "x.png"
    Image.fromarray(IMG).save(img)
    assert one_error_line(capsys, ["ask", "--model", str(b), str(img), "what"]).startswith(
        f"mmfast ask: {b}"
    )


def test_a_graph_failing_at_run_time_is_a_bundle_graph_error(vqa, tmp_path):
    # without config.vocab_size the longer vocabulary is only found out when ONNX Runtime
    # meets an id past the embedding table
    *_, bundle, _ = vqa
    b = tampered(
        bundle, tmp_path / "b", {"vocab.txt": _vocab_plus(bundle, 50)}, _without_vocab_size
    )
    v = VQA.load(b)
    with pytest.raises(BundleGraphError, match=r"answer_head\.onnx: ONNX Runtime failed to run"):
        v.answer(IMG, "x40 x41")


def test_answer_many_refuses_what_is_not_a_list_of_lists(vqa):
    *_, bundle, _ = vqa
    v = VQA.load(bundle)
    with pytest.raises(TypeError, match=r"questions\[0\]: expected a list of questions about"):
        v.answer_many([IMG], ["what colour"])  # not 11 one-letter questions
    with pytest.raises(TypeError, match="images: expected a list, got NoneType"):
        v.answer_many(None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="images: expected a list, got str"):
        v.answer_many("x.png", [["what"]])


# ------------------------------------------------------------- the PyTorch side's commands


def test_cli_data_refuses_bad_options_in_one_line(tmp_path, capsys):
    base = ["data", "shapes", "--out", str(tmp_path / "d"), "--num-images", "3", "--workers", "1"]
    cases = {
        ("--size", "0"): "mmfast data: --size must be 8..1024 px, got 0",
        ("--val-fraction", "2"): "mmfast data: --val-fraction must be in [0, 1), got 2.0",
        ("--val-fraction", "0.5", "--test-fraction", "0.5"): "mmfast data: --val-fraction + ",
        ("--noise", "nan"): "mmfast data: --noise must be a finite number >= 0, got nan",
        ("--texture-prob", "-1"): "mmfast data: --texture-prob must be in [0, 1], got -1.0",
        ("--workers", "0"): "mmfast data: --workers must be at least 1, got 0",
    }
    for args, message in cases.items():
        assert one_error_line(capsys, [*base, *args]).startswith(message)
    f = tmp_path / "file"
    f.write_text("")
    line = one_error_line(capsys, ["data", "shapes", "--out", str(f / "d"), "--num-images", "3"])
    assert line.startswith("mmfast data: [Errno 20] Not a directory")


def test_cli_export_of_a_bad_run_is_one_line(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("")
    line = one_error_line(capsys, ["export", str(f), "--out", str(tmp_path / "b")])
    assert line.startswith("mmfast export: [Errno 20] Not a directory")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps([]))
    assert one_error_line(capsys, ["export", str(run), "--out", str(tmp_path / "b")])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threads", "0"], "--threads must be at least 1, got 0"),  # was torch's RuntimeError
        (["--widths", "0,8"], "--widths must be positive channel counts, got '0,8'"),  # same
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),  # trained nothing, status 0
        (["--beam", "0"], "--beam must be at least 1, got 0"),
        (["--rerank-k", "0"], "--rerank-k must be at least 1, got 0"),
        (["--image-size", "0"], "--image-size must be 8..4096 px, got 0"),  # was the default
        (["--image-size", "20000"], "--image-size must be 8..4096 px, got 20000"),
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--length-penalty", "nan"], "--length-penalty must be a finite number >= 0, got nan"),
        (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0, got -1.0"),
    ],
)
def test_cli_train_refuses_bad_options_before_reading_data(args, message, tmp_path, capsys):
    argv = ["train", "caption", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]
    assert one_error_line(capsys, [*argv, *args]) == f"mmfast train: {message}"
