"""ViLT (``ViltForQuestionAnswering``) exported as a vqa bundle and run torch-free
(:class:`mmfast.VQA`): answers and scores as transformers' own model computes them from the
ViltProcessor's pixels, pixel mask and tokens, on real photos of several aspect ratios batched
together (so the batch is padded) and on generated scenes.

Tolerance (float64-derived): with s64 = sigmoid of the float64 model's logits
(``model.double()``) and err32 = max |s32 - s64| the float32 Hugging Face model's own error on
the same inputs, the bundle must satisfy |s - s64| <= 2 * err32 + 64 * eps32 (the bound the
export enforces) and never exceed the issue's 1e-4. The best answer must be the float32
model's, unless float64 cannot separate the two (checked: it can, for every case here).

A tiny config with random weights (built in about a second); the bundle is exported once per
module, through the CLI (``mmfast export MODEL_DIR --out BUNDLE``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.export

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_photos import real_photos  # noqa: E402
from PIL import Image  # noqa: E402

from mmfast import VQA  # noqa: E402
from mmfast.bundle import BundleError, BundleMismatchError, write_manifest  # noqa: E402
from mmfast.cli import main as cli_main  # noqa: E402
from mmfast.preprocess import PreprocessConfig, pad_batch, preprocess  # noqa: E402
from mmfast_export.hf.build_vilt import build_vilt  # noqa: E402
from mmfast_export.hf.common import check_images  # noqa: E402

QUESTIONS = [
    "what colour is the circle ?",
    "how many shapes are there ?",
    "is the small red square to the left of the large blue triangle ?",
]
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def vilt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, bundle) of a tiny ViLT VQA model, exported by the CLI."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("vilt")
    model_dir = build_vilt(root / "model", "tiny", seed=2)
    assert cli_main(["export", str(model_dir), "--out", str(root / "bundle")]) == 0
    return model_dir, root / "bundle"


def _images() -> list[np.ndarray]:
    """6 real photos (portrait, landscape, square, grayscale) + 2 generated scenes."""
    return real_photos() + check_images(2, 64)


def _hf_sigmoid(model_dir: Path, images: list[np.ndarray], question: str, dtype: torch.dtype):
    """The Hugging Face model's sigmoid scores (N, A) for one question about every image, fed
    exactly what ViltProcessor makes of them (one padded batch)."""
    proc = transformers.ViltProcessor.from_pretrained(model_dir)
    model = transformers.ViltForQuestionAnswering.from_pretrained(model_dir).eval().to(dtype)
    enc = proc(images=images, text=[question] * len(images), return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            pixel_values=enc["pixel_values"].to(dtype),
            pixel_mask=enc["pixel_mask"],
        ).logits
    return torch.sigmoid(logits.double()).numpy(), enc


@pytest.mark.parametrize("question", QUESTIONS)
def test_scores_and_answers_match_transformers(vilt: tuple[Path, Path], question: str) -> None:
    model_dir, bundle = vilt
    images = _images()
    s32, enc = _hf_sigmoid(model_dir, images, question, torch.float32)
    s64, _ = _hf_sigmoid(model_dir, images, question, torch.float64)
    vqa = VQA.load(bundle, threads=1)
    answers = vqa.answer_many(images, [[question]] * len(images), top_k=len(vqa.answers))
    got = np.zeros_like(s64)
    for i, per_image in enumerate(answers):
        (a,) = per_image
        assert a.top[0] == (a.text, a.confidence)
        for text, score in a.top:
            got[i, vqa.answers.index(text)] = score
    err32 = float(np.abs(s32 - s64).max())
    bound = 2 * err32 + 64 * EPS32
    assert np.abs(got - s64).max() <= min(bound, 1e-4)
    for i in range(len(images)):
        best, ref = int(got[i].argmax()), int(s32[i].argmax())
        # a real check: the float64 model separates the best answer from the runner-up by more
        # than the bound, so a wrong graph could not pass by luck
        runner = np.sort(s64[i])[-2]
        assert s64[i].max() - runner > 2 * bound
        assert best == ref
        assert answers[i][0].text == model_dir_label(model_dir, ref)
    # and the pixels the bundle saw are the processor's (bit for bit, pixel mask too)
    cfg = vqa.preprocess_config
    pixels, mask = pad_batch([preprocess(im, cfg) for im in images])
    assert np.array_equal(pixels, enc["pixel_values"].numpy())
    assert np.array_equal(mask, enc["pixel_mask"].numpy())


def model_dir_label(model_dir: Path, i: int) -> str:
    cfg = json.loads((model_dir / "config.json").read_text())
    return str(cfg["id2label"][str(i)])


def test_answer_does_not_depend_on_the_batch(vilt: tuple[Path, Path]) -> None:
    """A question answered alone, or in a padded batch with larger images and longer
    questions, gets the same scores (padding is masked)."""
    _, bundle = vilt
    vqa = VQA.load(bundle, threads=1)
    images = _images()
    alone = [vqa.answer(im, QUESTIONS[0], top_k=5) for im in images]
    together = vqa.answer_many(images, [[QUESTIONS[0], QUESTIONS[2]]] * len(images), top_k=5)
    for a, both in zip(alone, together, strict=True):
        assert [t for t, _ in a.top] == [t for t, _ in both[0].top]
        np.testing.assert_allclose(
            [s for _, s in a.top], [s for _, s in both[0].top], rtol=0, atol=64 * EPS32
        )


def test_long_and_strange_questions(vilt: tuple[Path, Path]) -> None:
    """An over-long question is cut as truncation=True cuts it (the model's 40 positions);
    characters the tokenizer never saw become [UNK]: both answered, tokens as transformers'."""
    model_dir, bundle = vilt
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    vqa = VQA.load(bundle, threads=1)
    long_q = "is the red circle left of the blue square and " * 20
    for q in (long_q, "什么 颜色 🙂 ?", "\u200b\u200b what ?"):
        want = tok(q, truncation=True).input_ids
        assert len(want) <= 40
        assert vqa.tokens([q], vqa.max_len)[0].tolist()[: len(want)] == want
        a = vqa.answer(check_images(1, 64)[0], q)
        assert a.text in vqa.answers and 0.0 <= a.confidence <= 1.0


def test_images_of_any_mode_and_size(vilt: tuple[Path, Path]) -> None:
    """Grayscale, palette, RGBA, 16-bit, 1x1, and banners so elongated that ViLT's rule cuts a
    side to nothing (transformers fails on them; mmfast keeps one patch row) all answer."""
    _, bundle = vilt
    vqa = VQA.load(bundle, threads=1)
    images = [
        Image.new("L", (50, 80), 128),
        Image.new("P", (30, 30)),
        Image.new("RGBA", (90, 40), (255, 0, 0, 100)),
        Image.new("I;16", (70, 30), 3000),
        Image.new("RGB", (1, 1)),
        Image.new("RGB", (4000, 20)),
        Image.new("RGB", (7, 300)),
    ]
    out = vqa.answer_many(images, [["what colour ?"]] * len(images))
    assert all(o[0].text in vqa.answers for o in out)
    cfg = vqa.preprocess_config
    assert preprocess(images[5], cfg).shape[1] == cfg.size_divisor  # one patch row


def test_bad_arguments_name_themselves(vilt: tuple[Path, Path]) -> None:
    _, bundle = vilt
    vqa = VQA.load(bundle, threads=1)
    im = check_images(1, 64)[0]
    cases = [
        (dict(question=""), ValueError, "question"),
        (dict(question="   "), ValueError, "question"),
        (dict(question="a", top_k=0), ValueError, "top_k"),
        (dict(question="a", top_k=True), ValueError, "top_k"),
        (dict(question="a", beam_size=3), ValueError, "beam_size"),
    ]
    for kw, err, name in cases:
        with pytest.raises(err, match=name):
            vqa.answer(im, **kw)
    with pytest.raises(TypeError, match="questions"):
        vqa.answer_many([im], ["what colour ?"])  # type: ignore[list-item]
    with pytest.raises(FileNotFoundError, match=r"images\[0\]"):
        vqa.answer("/no/such/image.png", "a")
    assert vqa.answer(im, "a", top_k=10**6).top[-1][0] in vqa.answers  # k capped at A


def test_top_k_is_sorted_and_consistent(vilt: tuple[Path, Path]) -> None:
    _, bundle = vilt
    vqa = VQA.load(bundle, threads=1)
    a = vqa.answer(real_photos()[0], QUESTIONS[1], top_k=7)
    scores = [s for _, s in a.top]
    assert len(a.top) == 7 and scores == sorted(scores, reverse=True)
    assert (a.text, a.confidence) == a.top[0]
    assert len({t for t, _ in a.top}) == 7
    assert vqa.answer(real_photos()[0], QUESTIONS[1]).top == []  # only when asked


def test_bundle_checks(vilt: tuple[Path, Path], tmp_path: Path) -> None:
    """The manifest records ViLT's scoring and preprocessing; a bundle whose preprocessing is
    not ViLT's, or whose answers file disagrees with the graph, is refused at load."""
    _, bundle = vilt
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["kind"] == "hf_vilt" and m["vqa"]["activation"] == "sigmoid"
    assert m["preprocess"]["resize_mode"] == "shortest_edge_capped"
    assert m["validation"]["hf_reference"]["tokens_identical"] is True
    bad = tmp_path / "square"
    shutil.copytree(bundle, bad)
    m2 = json.loads((bad / "manifest.json").read_text())
    m2["preprocess"] = PreprocessConfig(size=64).to_dict()
    write_manifest(bad, m2)
    with pytest.raises(BundleMismatchError, match="shortest_edge_capped"):
        VQA.load(bad)
    fewer = tmp_path / "fewer"
    shutil.copytree(bundle, fewer)
    answers = (fewer / "answers.txt").read_text().splitlines()
    (fewer / "answers.txt").write_text("\n".join(answers[:-1]) + "\n")
    m3 = json.loads((fewer / "manifest.json").read_text())
    write_manifest(fewer, m3)
    with pytest.raises(BundleError):
        VQA.load(fewer).answer(check_images(1, 64)[0], "a")


def test_sampled_patches_are_refused(tmp_path: Path) -> None:
    """max_image_length > 0 makes transformers sample patches at random: not exported."""
    model_dir = build_vilt(tmp_path / "model", "tiny")
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["max_image_length"] = 10
    (model_dir / "config.json").write_text(json.dumps(cfg))
    assert cli_main(["export", str(model_dir), "--out", str(tmp_path / "b")]) != 0
    assert not (tmp_path / "b").exists()


def test_square_graphs_refuse_the_capped_preprocessing(tmp_path: Path) -> None:
    """A bundle whose graph takes square images but whose manifest keeps each image's own size
    (an edited manifest) is refused at load, not at the first image."""
    from mmfast import Reranker
    from mmfast_export.hf.build import build_blip_itm
    from mmfast_export.hf.export import export_hf

    bundle = tmp_path / "itm"
    export_hf(build_blip_itm(tmp_path / "model", "tiny"), bundle)
    m = json.loads((bundle / "manifest.json").read_text())
    m["preprocess"].update(resize_mode="shortest_edge_capped", resize=32, size_divisor=8)
    write_manifest(bundle, m)
    with pytest.raises(BundleMismatchError, match="own size"):
        Reranker.load(bundle)
