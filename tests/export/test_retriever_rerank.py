"""A CLIP retriever with a BLIP image-text matching re-ranker attached: the shortlist comes from
CLIP's cosine, the final order and scores from the re-ranker's P(match), as transformers'
``BlipForImageTextRetrieval(..., use_itm_head=True)`` gives them; the re-ranker's image
features are kept with a saved index and refused when they belong to another re-ranker.

Tolerance: the scores are float32 probabilities compared with the float64 model's
(``model.double()``); the tiny models' float32 error is ~1e-7 (the re-ranker's own test
bounds it at 2 * the float32 model's error + 64 ulps), 1e-5 is far outside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.export

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_photos import real_photos  # noqa: E402

from mmfast import Reranker, Retriever  # noqa: E402
from mmfast.cli import main as cli_main  # noqa: E402
from mmfast_export import export  # noqa: E402
from mmfast_export.hf.build import build_blip_itm  # noqa: E402
from mmfast_export.hf.build_clip import build_clip  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attach")
    clip_dir = build_clip(root / "clip", "tiny", seed=5)
    itm_dir = build_blip_itm(root / "itm", "tiny", seed=2)
    export(clip_dir, root / "clip_bundle")
    export(itm_dir, root / "itm_bundle")
    return {"clip": root / "clip_bundle", "itm": root / "itm_bundle", "itm_dir": itm_dir}


def _itm_p(model_dir: Path, text: str, images: list[np.ndarray]) -> np.ndarray:
    """transformers' P(match) of `text` with each image, float64."""
    proc = transformers.BlipProcessor.from_pretrained(model_dir)
    model = transformers.BlipForImageTextRetrieval.from_pretrained(model_dir).eval().double()
    inp = proc(images=images, text=[text] * len(images), return_tensors="pt", truncation=True)
    with torch.no_grad():
        logits = model(
            input_ids=inp.input_ids,
            attention_mask=inp.attention_mask,
            pixel_values=inp.pixel_values.double(),
            use_itm_head=True,
        ).itm_score
    p: np.ndarray = logits.softmax(-1)[:, 1].numpy()
    return p


def test_rerank_orders_the_shortlist_by_itm(bundles: dict[str, Any]) -> None:
    photos = real_photos()
    ids = [f"p{i}" for i in range(len(photos))]
    r = Retriever.load(bundles["clip"], reranker=bundles["itm"])
    r.add_images(photos, ids=ids)
    text = "a photo of an astronaut"
    first, _ = r.search(text, k=len(photos))
    got_ids, got = r.search(text, k=3, rerank=True, rerank_k=4)
    shortlist = [int(i[1:]) for i in first[:4]]  # the re-ranker sees CLIP's top 4 only
    p = _itm_p(bundles["itm_dir"], text, [photos[i] for i in shortlist])
    order = np.argsort(-p, kind="stable")[:3]
    assert got_ids == [f"p{shortlist[j]}" for j in order]
    np.testing.assert_allclose(got, p[order], atol=TOL, rtol=0)


def test_features_saved_with_the_index(bundles: dict[str, Any], tmp_path: Path) -> None:
    photos = real_photos()[:4]
    r = Retriever.load(bundles["clip"], reranker=bundles["itm"])
    r.add_images(photos, ids=list("abcd"))
    r.save(tmp_path / "index")
    want = r.search("a cat", k=2, rerank=True)
    r2 = Retriever.load(bundles["clip"], reranker=bundles["itm"], index=tmp_path / "index")
    got = r2.search("a cat", k=2, rerank=True)
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])
    # removing an image removes its features; the rest still re-rank
    r2.remove(["a"])
    ids, _ = r2.search("a cat", k=3, rerank=True)
    assert "a" not in ids and len(ids) == 3
    # the CLI: an index built with the re-ranker re-ranks without naming it again
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    from PIL import Image

    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(img_dir / f"{i}.png")
    out = tmp_path / "cli_index"
    args = ["index", "build", "--model", str(bundles["clip"]), "--images", str(img_dir)]
    assert cli_main([*args, "--out", str(out), "--reranker", str(bundles["itm"]), "--quiet"]) == 0
    assert cli_main(["search", "--index", str(out), "a cat", "-k", "2", "--rerank"]) == 0


def test_rerank_needs_features_of_this_reranker(bundles: dict[str, Any], tmp_path: Path) -> None:
    photos = real_photos()[:3]
    r = Retriever.load(bundles["clip"])
    r.add_images(photos, ids=list("xyz"))
    with pytest.raises(ValueError, match="no re-ranker; attach one"):
        r.search("a cat", k=2, rerank=True)
    r.attach_reranker(Reranker.load(bundles["itm"]))  # after the images: none has features
    with pytest.raises(ValueError, match="attach the re-ranker before adding them"):
        r.search("a cat", k=2, rerank=True)
    r.save(tmp_path / "plain")
    # an index saved without features loads, but cannot re-rank until rebuilt
    r2 = Retriever.load(bundles["clip"], reranker=bundles["itm"], index=tmp_path / "plain")
    assert r2.search("a cat", k=2)[0] == r.search("a cat", k=2)[0]
    with pytest.raises(ValueError, match="re-ranker features"):
        r2.search("a cat", k=2, rerank=True)


@pytest.mark.parametrize("backend", ["hnsw", "ivfpq"])
def test_faiss_backends_behind_the_retriever(
    bundles: dict[str, Any], backend: str, tmp_path: Path
) -> None:
    """Few images: an approximate backend visits them all, so its ranking is the exact one's;
    it saves and loads (open_index picks the backend), and the backend cannot change once
    images are in."""
    pytest.importorskip("faiss")
    photos = real_photos()
    ids = [f"p{i}" for i in range(len(photos))]
    exact = Retriever.load(bundles["clip"])
    exact.add_images(photos, ids=ids)
    r = Retriever.load(bundles["clip"])
    r.use_index(backend)  # IVF-PQ stays exact until it has enough vectors to train on
    r.add_images(photos, ids=ids)
    text = "a photo of a cup of coffee"
    want_ids, want = exact.search(text, k=4)
    got_ids, got = r.search(text, k=4)
    assert got_ids == want_ids
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="choose the backend before adding"):
        r.use_index("exact")
    r.save(tmp_path / "i")
    r2 = Retriever.load(bundles["clip"], index=tmp_path / "i")
    assert type(r2.index) is type(r.index)
    assert r2.search(text, k=4)[0] == want_ids


def test_finetune_clip_learns_and_exports(tiny_shapes: Path, tmp_path: Path) -> None:
    """The demo's step 7 in small: transformers' contrastive loss falls over 150 steps
    on the shapes data (random guessing over a batch of B is log B), and the saved directory
    exports and searches."""
    from mmfast_export.hf.finetune import finetune_clip

    torch.set_num_threads(2)
    # bounded by steps, not time: a loaded machine must not change what is tested
    r = finetune_clip(tiny_shapes, tmp_path / "clip", seconds=3600, max_steps=150, batch_size=16)
    assert r.steps == 150
    assert r.first_loss == pytest.approx(np.log(16), rel=0.25)  # chance at the start
    assert r.last_loss < 0.8 * r.first_loss
    export(tmp_path / "clip", tmp_path / "bundle")
    ret = Retriever.load(tmp_path / "bundle")
    assert ret.embed_texts(["a red circle"])["text_embedding"].shape == (1, 128)
