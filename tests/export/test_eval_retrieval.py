"""`mmfast eval retrieval` end to end on a tiny exported retrieval bundle (untrained) and the
generated shapes dataset's Karpathy file, against metrics computed here from embeddings made
one input at a time; and the Karpathy file agrees with the COCO-format files beside it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

from mmfast.cli import main  # noqa: E402
from mmfast.karpathy import read_karpathy  # noqa: E402
from mmfast.preprocess import PreprocessConfig  # noqa: E402
from mmfast.retrieval_metrics import Ranks, metrics_from_ranks, retrieval_metrics  # noqa: E402
from mmfast.retriever import Retriever  # noqa: E402
from mmfast.tokenizer import Tokenizer  # noqa: E402
from mmfast_export.checkpoint import save_weights  # noqa: E402
from mmfast_export.onnx_export import export_run  # noqa: E402
from mmfast_export.runs import build_model  # noqa: E402


def near_tie_metrics(sim: np.ndarray, g: np.ndarray, eps: float, optimistic: bool) -> dict:
    """The metrics with scores within eps of the true item's counted below it (optimistic)
    or at least as high (pessimistic); loops, float64."""
    n_texts, n_images = sim.shape
    margin = eps if optimistic else -eps
    t2i = [
        1 + sum(sim[t, j] >= sim[t, g[t]] + margin for j in range(n_images) if j != g[t])
        for t in range(n_texts)
    ]
    i2t = []
    for i in range(n_images):
        top = max(sim[t, i] for t in range(n_texts) if g[t] == i)
        i2t.append(1 + sum(sim[t, i] >= top + margin for t in range(n_texts) if g[t] != i))
    ranks = Ranks(np.array(t2i), np.array(i2t))
    return metrics_from_ranks(ranks).as_dict()


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_karpathy_file_matches_coco_files(tiny_shapes, split):
    s = read_karpathy(tiny_shapes / "dataset_shapes.json", tiny_shapes / "images", split)
    coco = json.loads((tiny_shapes / f"captions_{split}.json").read_text())
    assert s.dataset == "shapes"
    assert s.image_paths == [tiny_shapes / "images" / im["file_name"] for im in coco["images"]]
    assert all(p.is_file() for p in s.image_paths)
    by_image = [
        [a["caption"] for a in coco["annotations"] if a["image_id"] == im["id"]]
        for im in coco["images"]
    ]
    assert s.captions == [c for caps in by_image for c in caps]
    assert s.image_of_text.tolist() == [i for i, caps in enumerate(by_image) for _ in caps]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_shapes):
    run = tmp_path_factory.mktemp("retrieval_run")
    train = read_karpathy(tiny_shapes / "dataset_shapes.json", tiny_shapes / "images", "train")
    tok = Tokenizer.build(train.captions)
    cfg = {
        "kind": "retrieval",
        "vocab_size": len(tok),
        "encoder": {"image_size": 32, "widths": [8, 16], "blocks": 1},
        "text_dim": 32,
        "text_layers": 1,
        "heads": 2,
        "embed_dim": 24,
        "max_len": 32,
        "rerank": False,
    }
    torch.manual_seed(0)
    save_weights(build_model("retrieval", cfg), run / "model.safetensors")
    tok.save(run / "vocab.txt")
    config = {
        "format": 1,
        "task": "retrieval",
        "model": cfg,
        "preprocess": PreprocessConfig(size=32).to_dict(),
        "vocab": "vocab.txt",
    }
    (run / "config.json").write_text(json.dumps(config))
    out = tmp_path_factory.mktemp("retrieval_bundle")
    export_run(run, out)
    return out


def test_eval_retrieval_cli(bundle, tiny_shapes, tmp_path, capsys):
    karpathy = tiny_shapes / "dataset_shapes.json"
    out = tmp_path / "metrics.json"
    argv = ["eval", "retrieval", "--model", str(bundle), "--karpathy", str(karpathy)]
    argv += ["--images", str(tiny_shapes / "images"), "--batch-size", "3", "--threads", "1"]
    assert main([*argv, "--json", str(out), "--quiet"]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())

    # The reference: every image and caption embedded alone, cosines in float64.
    split = read_karpathy(karpathy, tiny_shapes / "images", "test", captions_per_image=5)
    r = Retriever.load(bundle, threads=1)
    img = np.concatenate([r.embed_images([p])["image_embedding"] for p in split.image_paths])
    txt = np.concatenate([r.embed_texts([c])["text_embedding"] for c in split.captions])
    img = img.astype(np.float64) / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt.astype(np.float64) / np.linalg.norm(txt, axis=1, keepdims=True)
    sim = txt @ img.T  # (T, I)
    # Two scores closer than rounding (float32 cosines, embeddings batched or not) may come out
    # in either order: the report must lie between the metrics with every such near-tie
    # broken for and against the true items.
    g = split.image_of_text
    lo = retrieval_metrics(sim, g).as_dict()  # exact float64 ties only
    best = near_tie_metrics(sim, g, eps=1e-4, optimistic=True)
    worst = near_tie_metrics(sim, g, eps=1e-4, optimistic=False)
    for key in lo:
        better_high = not key.endswith("rank")
        hi_bound, lo_bound = (best, worst) if better_high else (worst, best)
        assert lo_bound[key] - 1e-9 <= report[key] <= hi_bound[key] + 1e-9, key
        assert lo_bound[key] - 1e-9 <= lo[key] <= hi_bound[key] + 1e-9, key
    # The bounds are tight (a near-tie is rare), so the check above has teeth.
    assert abs(best["rsum"] - worst["rsum"]) < 25
    assert (report["n_images"], report["n_texts"]) == (len(split.image_paths), 5 * len(img))
    assert table.splitlines()[0] == f"shapes test: {len(img)} images, {5 * len(img)} captions"
    assert f"rSUM {report['rsum']:.2f}" in table


def test_eval_retrieval_wrong_bundle_task(tiny_shapes, bundle, tmp_path, capsys):
    # A file that is not a bundle: one line, status 2.
    argv = ["eval", "retrieval", "--model", str(tmp_path), "--quiet"]
    argv += ["--karpathy", str(tiny_shapes / "dataset_shapes.json")]
    assert main([*argv, "--images", str(tiny_shapes / "images")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmfast eval retrieval: ") and err.count("\n") == 1
