"""BLIP image-text matching (``BlipForImageTextRetrieval``) exported as a re-ranker bundle and
run torch-free (:class:`mmfast.Reranker`): P(match) as transformers' own
``model(..., use_itm_head=True)`` computes it, from raw images and texts (the Hugging Face
processor's pixels and tokens on one side, mmfast's preprocessing and tokenizer.json on the
other), on real photos and generated scenes.

Tolerance (float64-derived): with p64 the float64 model's P(match) (``model.double()``) and
err32 = max |p32 - p64| the float32 Hugging Face model's own error on the same pairs, the
bundle must satisfy |p - p64| <= 2 * err32 + 64 * eps32 (eps32 = 2^-23, 64 ulps of 1 = 7.6e-6;
:func:`mmfast_export.hf.blip_itm.score_bound`, the bound the export itself enforces). Rankings
must be identical to the float32 model's; the test checks that its candidates' scores are
further apart than the bound, so identity is a real check and not luck.

A tiny config with random weights (built in about a second); the bundle is exported once per
module, through the CLI (``mmfast export MODEL_DIR --out BUNDLE``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.export

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_photos import real_photos  # noqa: E402

from mmfast import Captioner, Reranker  # noqa: E402
from mmfast.bundle import BundleFormatError, write_manifest  # noqa: E402
from mmfast.cli import main as cli_main  # noqa: E402
from mmfast_export.hf.blip_itm import score_bound  # noqa: E402
from mmfast_export.hf.build import build_blip_itm  # noqa: E402
from mmfast_export.hf.common import check_images  # noqa: E402

TEXTS = ["a red circle left of a blue square", "an astronaut", "a cup of coffee on a table"]
MAX_LEN = 64  # the tiny text encoder's position table (and so its tokenizer's model_max_length)
LONG = " ".join(["a small red circle above a large blue square and"] * 12)  # > MAX_LEN tokens


@pytest.fixture(scope="module")
def itm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, bundle) of a tiny BLIP ITM model, exported by the CLI."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("blip_itm")
    model_dir = build_blip_itm(root / "model", "tiny", seed=1)
    assert cli_main(["export", str(model_dir), "--out", str(root / "bundle")]) == 0
    return model_dir, root / "bundle"


def _candidates() -> list[np.ndarray]:
    """10 candidate images: 6 real photos, 4 generated scenes (uint8 (H, W, 3))."""
    return real_photos() + check_images(4, 64)


def _hf_scores(model_dir: Path, texts: list[str], images: list[np.ndarray]) -> np.ndarray:
    """(p32, p64): texts[i] with images[i], by BlipProcessor + the model's forward in float32
    and float64 (the processor pads the texts and cuts them as truncation=True)."""
    proc = transformers.BlipProcessor.from_pretrained(model_dir)
    model = transformers.BlipForImageTextRetrieval.from_pretrained(model_dir).eval()
    inp = proc(images=images, text=texts, padding=True, truncation=True, return_tensors="pt")
    out = []
    for m, dtype in ((model, torch.float32), (model.double(), torch.float64)):
        with torch.no_grad():
            logits = m(
                input_ids=inp.input_ids,
                attention_mask=inp.attention_mask,
                pixel_values=inp.pixel_values.to(dtype),
                use_itm_head=True,
            ).itm_score
        out.append(logits.double().softmax(-1)[:, 1].numpy())
    return np.stack(out)


@pytest.mark.parametrize("text", [*TEXTS, LONG])
def test_scores_and_ranking_match_transformers(itm: tuple[Path, Path], text: str) -> None:
    model_dir, bundle = itm
    images = _candidates()
    p32, p64 = _hf_scores(model_dir, [text] * len(images), images)
    rr = Reranker.load(bundle, threads=1)
    order, scores = rr.rank(text, images)
    p = np.empty_like(scores)
    p[order] = scores
    bound = score_bound(float(np.abs(p32 - p64).max()))
    assert np.abs(p - p64).max() <= bound
    assert order.tolist() == np.argsort(-p32, kind="stable").tolist()
    # the check is not decided by ties: neighbours in the ranking are further apart than that
    assert np.diff(np.sort(p64)).min() > 2 * bound
    assert scores.dtype == np.float32 and np.all(np.diff(scores) <= 0)


def test_long_text_is_cut_as_truncation_true(itm: tuple[Path, Path]) -> None:
    model_dir, bundle = itm
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    rr = Reranker.load(bundle, threads=1)
    assert rr.max_len == MAX_LEN == tok.model_max_length
    assert len(tok(LONG, verbose=False).input_ids) > MAX_LEN
    want = tok(LONG, truncation=True).input_ids
    assert rr.encode(LONG) == want
    assert len(want) == MAX_LEN and want[-1] == tok.sep_token_id  # [SEP] kept at the end


def test_score_pairs_pads_texts_of_several_lengths(itm: tuple[Path, Path]) -> None:
    """One text per image, of several lengths (padded in one batch, and cut): as transformers'
    padded batch, and as scoring each text alone."""
    model_dir, bundle = itm
    images = _candidates()[:5]
    texts = [TEXTS[0], "cat", LONG, TEXTS[2], "two green triangles below a yellow star"]
    p32, p64 = _hf_scores(model_dir, texts, images)
    rr = Reranker.load(bundle, threads=1)
    feats = rr.image_features(images)
    p = rr.score_pairs(texts, feats)
    assert p.shape == (5,) and p.dtype == np.float32
    assert np.abs(p - p64).max() <= score_bound(float(np.abs(p32 - p64).max()))
    alone = np.concatenate([rr.score(t, feats[i : i + 1]) for i, t in enumerate(texts)])
    np.testing.assert_allclose(p, alone, atol=1e-6, rtol=0)  # padding changes nothing


def test_features_batches_and_dtypes(itm: tuple[Path, Path], tmp_path: Path) -> None:
    """image_features: paths, PIL images and arrays alike, (B, N, D) float32, in any batch
    size; score: the same in chunks of any size; float16 features (as an index may keep them)
    are taken."""
    from PIL import Image

    _, bundle = itm
    rr = Reranker.load(bundle, threads=1)
    images = _candidates()
    Image.fromarray(images[1]).save(tmp_path / "b.png")
    feats = rr.image_features(images, batch_size=4)
    assert feats.shape == (10, 17, 32) and feats.dtype == np.float32  # [CLS] + 4 x 4 patches
    mixed = rr.image_features([images[0], tmp_path / "b.png", Image.fromarray(images[2])])
    np.testing.assert_allclose(mixed, feats[:3], atol=1e-5, rtol=0)
    one = rr.image_features(images[0])  # one image, not in a list
    assert one.shape == (1, 17, 32)
    whole = rr.score(TEXTS[0], feats)
    np.testing.assert_allclose(rr.score(TEXTS[0], feats, batch_size=3), whole, atol=1e-6)
    half = rr.score(TEXTS[0], feats.astype(np.float16))
    np.testing.assert_allclose(half, whole, atol=1e-2)


def test_manifest_records_the_checks(itm: tuple[Path, Path]) -> None:
    m = json.loads((itm[1] / "manifest.json").read_text())
    assert (m["task"], m["kind"]) == ("rerank", "hf_blip_itm")
    assert m["config"]["architecture"] == "BlipForImageTextRetrieval"
    assert m["rerank"] == {"max_len": MAX_LEN}
    assert m["vocab"] == "tokenizer.json"
    g = m["graphs"]
    assert (g["image_encoder.onnx"]["inputs"], g["image_encoder.onnx"]["outputs"]) == (
        ["images"],
        ["image_features"],
    )
    assert g["itm.onnx"]["inputs"] == ["tokens", "token_mask", "image_features"]
    assert g["itm.onnx"]["outputs"] == ["score", "itm_logits"]
    ref = m["validation"]["hf_reference"]
    assert ref["tokens_identical"] and ref["ranking_identical"]
    assert ref["score_max_abs_err_vs_float64"] <= ref["score_bound"]
    assert ref["images"] >= 8 and ref["longest_text_tokens"] > MAX_LEN


def test_export_check_catches_small_differences(itm: tuple[Path, Path]) -> None:
    """The export's check against transformers fails for a model that differs from the
    bundle by 1e-4 in one ITM logit (P(match) moves by about 2.5e-5, over the bound), and for
    texts cut at another length than the bundle's."""
    from mmfast.preprocess import PreprocessConfig, preprocess_batch
    from mmfast_export.hf.blip_itm import TokenizationMismatchError, check_reference
    from mmfast_export.onnx_export import OutputValueError

    model_dir, bundle = itm
    model = transformers.BlipForImageTextRetrieval.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    images = check_images(8, 32)
    cfg = PreprocessConfig.from_hf(json.loads((model_dir / "preprocessor_config.json").read_text()))
    pixels = torch.from_numpy(preprocess_batch(images, cfg))
    report = check_reference(bundle, model, tok, images, pixels, MAX_LEN)
    assert report["tokens_identical"] and report["ranking_identical"]
    with pytest.raises(TokenizationMismatchError, match="differ from the Hugging Face"):
        check_reference(bundle, model, tok, images, pixels, MAX_LEN // 2)
    with torch.no_grad():
        model.itm_head.bias[1] += 1e-4
    with pytest.raises(OutputValueError, match="P\\(match\\) differs from the float64"):
        check_reference(bundle, model, tok, images, pixels, MAX_LEN)


# ---------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def loaded(itm: tuple[Path, Path]) -> tuple[Reranker, np.ndarray]:
    """The bundle loaded, and 3 images' features (B = 3, N = 17, D = 32)."""
    rr = Reranker.load(itm[1], threads=1)
    return rr, rr.image_features(_candidates()[:3])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda r, f: r.score("", f), ValueError, "text: expected a non-empty string"),
        (lambda r, f: r.score("  \n", f), ValueError, "text: expected a non-empty string"),
        (lambda r, f: r.score(3, f), ValueError, "text: expected a non-empty string"),
        (lambda r, f: r.score(["a cat"], f), ValueError, "text: expected a non-empty string"),
        (lambda r, f: r.score("a cat", f[0]), ValueError, r"image_features: .*got \(17, 32\)"),
        (lambda r, f: r.score("a cat", f[..., :8]), ValueError, r"image_features: .*\(B, 17, 32\)"),
        (lambda r, f: r.score("a cat", f[:, :5]), ValueError, r"image_features: .*\(3, 5, 32\)"),
        (lambda r, f: r.score("a cat", f[:0]), ValueError, r"image_features: .*\(0, 17, 32\)"),
        (lambda r, f: r.score("a cat", f.astype(int)), ValueError, "image_features: .*dtype"),
        (lambda r, f: r.score("a cat", f.tolist()), TypeError, "image_features: .*list"),
        (lambda r, f: r.score("a cat", f * np.nan), ValueError, "image_features: contains NaN"),
        (lambda r, f: r.score("a cat", f, batch_size=0), ValueError, "batch_size"),
        (lambda r, f: r.score_pairs(["a", "b"], f), ValueError, "texts: 2 texts for 3 images"),
        (lambda r, f: r.score_pairs("abc", f), ValueError, "texts: expected a list"),
        (lambda r, f: r.score_pairs(["a", "", "b"], f), ValueError, r"texts\[1\]: expected"),
        (lambda r, f: r.rank(" ", ["x.png"]), ValueError, "text: expected a non-empty string"),
        (lambda r, f: r.image_features([]), ValueError, "images: no images"),
        (
            lambda r, f: r.image_features([np.zeros((8, 8, 3), np.uint8), 7]),
            TypeError,
            r"images\[1\]",
        ),
    ],
)
def test_bad_input_names_the_argument(
    loaded: tuple[Reranker, np.ndarray], call: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call(*loaded)  # type: ignore[operator]


def test_missing_image_file_names_it(itm: tuple[Path, Path], tmp_path: Path) -> None:
    rr = Reranker.load(itm[1], threads=1)
    with pytest.raises(FileNotFoundError, match=r"images\[1\]: no such file"):
        rr.rank("a cat", [_candidates()[0], tmp_path / "missing.png"])


def test_bundle_of_another_task(itm: tuple[Path, Path], tmp_path: Path) -> None:
    """A retrieval bundle given to Reranker.load, and this bundle given to the captioner:
    each refused, naming both tasks. (The retrieval bundle is this one's files under a
    retrieval manifest: Reranker.load must refuse it on its task alone.)"""
    bundle = itm[1]
    with pytest.raises(BundleFormatError, match="a 'rerank' bundle, not a 'caption' one"):
        Captioner.load(bundle)
    other = shutil.copytree(bundle, tmp_path / "retrieval")
    m = json.loads((other / "manifest.json").read_text())
    m = {k: v for k, v in m.items() if k not in ("format_version", "files", "rerank")}
    m.update(task="retrieval", retrieval={"logit_scale": 100.0, "rerank": False, "max_len": 64})
    write_manifest(other, m)
    with pytest.raises(BundleFormatError, match="a 'retrieval' bundle, not a 'rerank' one"):
        Reranker.load(other)


def test_runs_with_torch_and_transformers_blocked(itm: tuple[Path, Path]) -> None:
    """The runtime side: import mmfast and score with torch and transformers unimportable;
    `import mmfast` alone loads none of the pipelines' dependencies."""
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers'): sys.modules[m] = None\n"
        "import mmfast\n"
        "heavy = ('onnxruntime', 'tokenizers', 'PIL')\n"
        "assert not [m for m in heavy if m in sys.modules], sys.modules.keys()\n"
        "import numpy as np\n"
        f"rr = mmfast.Reranker.load({str(itm[1])!r}, threads=1)\n"
        "order, s = rr.rank('a red circle', [np.zeros((40, 50, 3), np.uint8)] * 2)\n"
        "print('OK', order.tolist(), s.shape)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK [0, 1] (2,)"
