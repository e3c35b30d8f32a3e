"""Hugging Face dual encoders (CLIPModel, SiglipModel) exported as retrieval bundles and run
torch-free: embeddings, rankings and zero-shot probabilities against transformers on real
photos, image -> text search, and the index's model checks.

Tiny configs with random weights (built in about a second). The reference is the model in
float64 (float32 under transformers 4.x, see REF_DTYPE), so the bounds below are float32's
error, not transformers':
each embedding within cosine distance 1e-4 of it (the issue's bar), and probabilities within
1e-4 (a logit error of scale * |d cos| <= 14.3 * ~1e-6 moves a probability by ~1e-5).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.export

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_photos import real_photos  # noqa: E402

from mmfast import Retriever  # noqa: E402
from mmfast_export import export  # noqa: E402
from mmfast_export.hf.build_clip import build_clip, build_siglip  # noqa: E402

COSINE = 1e-4
# transformers 4.x cannot run CLIP's text model in float64 (building its causal mask
# overflows): there the reference is float32, whose error (~1e-6) is far inside the bounds
REF_DTYPE = torch.float64 if int(transformers.__version__.split(".")[0]) >= 5 else torch.float32
PROB = 1e-4
TEXTS = [
    "a red circle left of a blue square",
    "a photo of an astronaut",
    "Coffee! In a white cup, on a saucer; with a spoon.",
    "a cat",
    # longer than the tiny models' max_position_embeddings (32 and 16): cut, end token kept
    " ".join(["a green triangle above a small yellow circle"] * 6),
    "ünïcödé 日本語 😀 text",
]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def dual(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """(kind, model directory, bundle)."""
    root = tmp_path_factory.mktemp(request.param)
    build = build_clip if request.param == "clip" else build_siglip
    model_dir = build(root / "model", "tiny", seed=3)
    export(model_dir, root / "bundle")
    return request.param, model_dir, root / "bundle"


def _reference(kind: str, model_dir: Path, images: list[np.ndarray], texts: list[str]) -> Any:
    """transformers' forward in float64 on its own processor's inputs: (image_embeds,
    text_embeds, logits_per_image)."""
    cls = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
    model = cls.from_pretrained(model_dir).eval().to(REF_DTYPE)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    proc = transformers.AutoImageProcessor.from_pretrained(model_dir)
    pad = "max_length" if kind == "siglip" else True
    enc = tok(texts, padding=pad, truncation=True, return_tensors="pt")
    pixels = proc(images=images, return_tensors="pt").pixel_values.to(REF_DTYPE)
    # no attention mask: CLIP's pooled (first end-of-text) position never attends to the
    # padding after it (the export's own check runs the model with the mask)
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], pixel_values=pixels)
    return (
        out.image_embeds.numpy(),
        out.text_embeds.numpy(),
        out.logits_per_image.numpy(),
    )


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_embeddings_rankings_and_probabilities_match_transformers(dual: Any) -> None:
    kind, model_dir, bundle = dual
    photos = real_photos()
    ref_img, ref_txt, ref_logits = _reference(kind, model_dir, photos, TEXTS)
    r = Retriever.load(bundle)
    got_img = r.embed_images(photos)["image_embedding"]
    got_txt = r.embed_texts(TEXTS)["text_embedding"]
    assert 1 - _cos(got_img, ref_img).min() <= COSINE
    assert 1 - _cos(got_txt, ref_txt).min() <= COSINE
    # search: every text ranks the photos as transformers' logits do
    r.add_images(photos, ids=[f"photo{i}" for i in range(len(photos))])
    for j, text in enumerate(TEXTS):
        ids, scores = r.search(text, k=len(photos))
        want = [f"photo{i}" for i in np.argsort(-ref_logits[:, j], kind="stable")]
        assert ids == want
        np.testing.assert_allclose(scores, np.sort(ref_img @ ref_txt[j])[::-1], atol=COSINE)
    # zero-shot: the model's own probabilities (softmax over labels, or SigLIP's sigmoid)
    probs = r.classify(photos, TEXTS)
    logits = torch.from_numpy(ref_logits)
    want_p = logits.softmax(1) if kind == "clip" else logits.sigmoid()
    np.testing.assert_allclose(probs, want_p.numpy(), atol=PROB, rtol=0)
    assert probs.shape == (len(photos), len(TEXTS))
    one = r.classify(photos[1], TEXTS)
    np.testing.assert_allclose(one, probs[1], atol=1e-6)


def test_image_to_text_search(dual: Any) -> None:
    kind, model_dir, bundle = dual
    photos = real_photos()[:3]
    ref_img, ref_txt, _ = _reference(kind, model_dir, photos, TEXTS)
    r = Retriever.load(bundle)
    r.add_texts(TEXTS)
    for i, photo in enumerate(photos):
        ids, scores = r.search_texts(photo, k=3)
        sims = ref_txt @ ref_img[i]
        assert ids == [TEXTS[j] for j in np.argsort(-sims, kind="stable")[:3]]
        np.testing.assert_allclose(scores, np.sort(sims)[::-1][:3], atol=COSINE)


def test_template_is_applied(dual: Any) -> None:
    _, _, bundle = dual
    r = Retriever.load(bundle)
    photo = real_photos()[0]
    labels = ["cat", "astronaut", "rocket"]
    with_template = r.classify(photo, labels, template="a photo of a {}.")
    spelled_out = r.classify(photo, [f"a photo of a {x}." for x in labels])
    np.testing.assert_allclose(with_template, spelled_out, atol=1e-7)


def test_manifest_records_the_scoring(dual: Any) -> None:
    kind, model_dir, bundle = dual
    m = json.loads((bundle / "manifest.json").read_text())
    cls = transformers.CLIPModel if kind == "clip" else transformers.SiglipModel
    model = cls.from_pretrained(model_dir)
    cfg = m["retrieval"]
    assert cfg["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    assert cfg["activation"] == ("softmax" if kind == "clip" else "sigmoid")
    assert cfg["pad_to_max_len"] is (kind == "siglip")
    assert m["validation"]["reference"]["rankings_identical"] is True
    assert m["kind"] == f"hf_{kind}"


def test_saved_index_round_trip_and_model_checks(dual: Any, tmp_path: Path) -> None:
    kind, _, bundle = dual
    photos = real_photos()
    r = Retriever.load(bundle)
    r.add_images(photos, ids=[f"p{i}" for i in range(len(photos))])
    r.add_texts(TEXTS[:3])
    r.save(tmp_path / "index")
    r2 = Retriever.load(bundle, index=tmp_path / "index")
    (a_ids, a_scores), (b_ids, b_scores) = r.search(TEXTS[1], k=4), r2.search(TEXTS[1], k=4)
    assert a_ids == b_ids
    np.testing.assert_array_equal(a_scores, b_scores)
    assert r2.search_texts(photos[0], k=2)[0] == r.search_texts(photos[0], k=2)[0]
    # another model of the same embedding size: refused, naming the model
    other = tmp_path / "other"
    build = build_clip if kind == "clip" else build_siglip
    export(build(tmp_path / "other_model", "tiny", seed=4), other)
    with pytest.raises(ValueError, match="made by another model"):
        Retriever.load(other, index=tmp_path / "index")


def test_bad_input_is_a_clear_error(dual: Any) -> None:
    _, _, bundle = dual
    r = Retriever.load(bundle)
    photo = real_photos()[0]
    with pytest.raises(ValueError, match="empty"):
        r.search("a cat", k=3)
    r.add_images([photo], ids=["p"])
    with pytest.raises(ValueError, match="k: expected a positive int"):
        r.search("a cat", k=0)
    with pytest.raises(ValueError, match="text: expected a non-empty string"):
        r.search("   ", k=1)
    with pytest.raises(ValueError, match="labels"):
        r.classify(photo, [])
    with pytest.raises(ValueError, match=r"labels.*repeated"):
        r.classify(photo, ["cat", "cat"])
    with pytest.raises(ValueError, match="template"):
        r.classify(photo, ["cat"], template="no slot")
    with pytest.raises(ValueError, match="rerank"):
        r.search("a cat", k=1, rerank=True)
    with pytest.raises(ValueError, match="already in the index"):
        r.add_images([photo], ids=["p"])
    n = len(r.index)
    with pytest.raises(FileNotFoundError):  # nothing added when one image fails
        r.add_images([photo, "/no/such.png"], ids=["q", "r"])
    assert len(r.index) == n


def test_cli_export_and_classify(dual: Any, tmp_path: Path) -> None:
    _, model_dir, _ = dual
    out = tmp_path / "b"
    subprocess.run(
        [sys.executable, "-m", "mmfast", "export", str(model_dir), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    img = tmp_path / "astronaut.png"
    from PIL import Image

    Image.fromarray(real_photos()[0]).save(img)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmfast",
            "classify",
            "--model",
            str(out),
            str(img),
            "--labels",
            "cat,astronaut,rocket",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    r = Retriever.load(out)
    probs = r.classify(str(img), ["cat", "astronaut", "rocket"], template="a photo of a {}.")
    lines = [x.split("\t") for x in p.stdout.strip().splitlines()]
    assert [x[1] for x in lines] == [
        ["cat", "astronaut", "rocket"][i] for i in np.argsort(-probs, kind="stable")
    ]
    np.testing.assert_allclose([float(x[0]) for x in lines], np.sort(probs)[::-1], atol=1e-4)


def test_eval_retrieval_on_a_karpathy_split(dual: Any, tmp_path: Path) -> None:
    """mmfast eval's metrics for an HF bundle equal those of transformers' embeddings."""
    from PIL import Image

    from mmfast.karpathy import KarpathyImage, read_karpathy, write_karpathy
    from mmfast.retrieval_eval import evaluate_retrieval
    from mmfast.retrieval_metrics import retrieval_metrics

    kind, model_dir, bundle = dual
    photos = real_photos()
    entries = []
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(tmp_path / f"{i}.png")
        caps = (TEXTS[i % len(TEXTS)], TEXTS[(i + 2) % len(TEXTS)])
        entries.append(KarpathyImage(f"{i}.png", "test", caps))
    write_karpathy(tmp_path / "k.json", entries)
    split = read_karpathy(tmp_path / "k.json", tmp_path, "test")
    got = evaluate_retrieval(Retriever.load(bundle), split)
    ref_img, ref_txt, _ = _reference(kind, model_dir, photos, split.captions)
    want = retrieval_metrics(ref_txt @ ref_img.T, split.image_of_text).as_dict()
    for key in ("t2i_r1", "t2i_r5", "i2t_r1", "rsum", "t2i_median_rank", "i2t_median_rank"):
        assert got[key] == want[key], key


def test_a_large_text_batch_runs_in_length_groups(dual: Any) -> None:
    """CLIP's batches run as groups of similar length (SigLIP's pad to max_length): the
    embeddings are those of each text alone, and transformers' (with its attention mask)."""
    kind, model_dir, bundle = dual
    texts = [t[: 3 + 7 * i % len(t)] or t for i, t in enumerate(TEXTS * 4)]  # 24, mixed lengths
    r = Retriever.load(bundle)
    batch = r.embed_texts(texts)["text_embedding"]
    alone = np.concatenate([r.embed_texts([t])["text_embedding"] for t in texts])
    np.testing.assert_allclose(batch, alone, atol=1e-6, rtol=0)
    _, ref_txt, _ = _reference(kind, model_dir, real_photos()[:1], texts)
    assert 1 - _cos(batch, ref_txt).min() <= COSINE
