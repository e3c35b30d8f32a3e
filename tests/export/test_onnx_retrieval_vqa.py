"""Export round trips for the retriever and the VQA model (tiny, untrained): ONNX Runtime
rankings and answers identical to PyTorch's; index save/load; bad input."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytestmark = pytest.mark.export
torch = pytest.importorskip("torch")

from mmfast.preprocess import PreprocessConfig, preprocess_batch  # noqa: E402
from mmfast.retriever import Retriever  # noqa: E402
from mmfast.tokenizer import Tokenizer  # noqa: E402
from mmfast.vqa import VQA  # noqa: E402
from mmfast_export.checkpoint import save_weights  # noqa: E402
from mmfast_export.onnx_export import export_run  # noqa: E402
from mmfast_export.runs import build_model  # noqa: E402

WORDS = "a small large red blue green circle square left right of above below what colour".split()
ENC = {"image_size": 32, "widths": [8, 16], "blocks": 1}
TEXTS = ["a red circle", "a small blue square left of a green circle", "what", "above below"]


def make_run(tmp_path_factory, task, model_cfg, answers=None):
    run = tmp_path_factory.mktemp(task)
    tok = Tokenizer.build([" ".join(WORDS)])
    model_cfg = {"vocab_size": len(tok), "encoder": ENC, **model_cfg}
    torch.manual_seed(1)
    model = build_model(task, model_cfg)
    save_weights(model, run / "model.safetensors")
    tok.save(run / "vocab.txt")
    if answers:
        (run / "answers.txt").write_text("\n".join(answers) + "\n")
    prep = PreprocessConfig(size=32)
    (run / "config.json").write_text(
        json.dumps(
            {
                "format": 1,
                "task": task,
                "model": model_cfg,
                "preprocess": prep.to_dict(),
                "vocab": "vocab.txt",
            }
        )
    )
    bundle = tmp_path_factory.mktemp(task + "_bundle")
    export_run(run, bundle)
    model.eval()
    return model, tok, prep, bundle


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (rng.integers(20, 48), rng.integers(20, 48), 3), dtype=np.uint8)
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory):
    cfg = {
        "kind": "retrieval",
        "text_dim": 32,
        "text_layers": 1,
        "heads": 2,
        "embed_dim": 24,
        "max_len": 16,
        "rerank": True,
        "pool_heads": 2,
    }
    return make_run(tmp_path_factory, "retrieval", cfg)


def test_retrieval_rankings_identical_to_pytorch(retrieval, tmp_path):
    model, tok, prep, bundle = retrieval
    imgs = images(40)
    r = Retriever.load(bundle, threads=1)
    r.add_images(imgs, ids=[f"im{i}" for i in range(40)], batch_size=16)
    with torch.no_grad():
        img_emb, regions = model.encode_image(torch.from_numpy(preprocess_batch(imgs, prep)))
    for text in TEXTS:
        ids = torch.tensor([tok.encode(text)])
        with torch.no_grad():
            t_emb, feats, mask = model.encode_text(ids)
        sim = (t_emb @ img_emb.T)[0]
        want = [f"im{j}" for j in torch.argsort(-sim, stable=True).tolist()[:10]]
        got, scores = r.search(text, k=10)
        assert got == want
        np.testing.assert_allclose(scores, sim.sort(descending=True).values[:10].numpy(), atol=1e-5)
        # re-ranking: fused = scale * cosine + re-ranker score over the top 10
        top = torch.argsort(-sim, stable=True)[:10]
        with torch.no_grad():
            s = model.rerank(feats.repeat(10, 1, 1), mask.repeat(10, 1), regions[top])
            fused = model.temperature_scale() * sim[top] + s
        order = torch.argsort(-fused, stable=True)
        got_r, fused_r = r.search(text, k=5, rerank=True)
        assert got_r == [f"im{j}" for j in top[order][:5].tolist()]
        np.testing.assert_allclose(fused_r, fused[order][:5].numpy(), atol=1e-3)
    r.save(tmp_path / "index")
    r2 = Retriever.load(bundle, index=tmp_path / "index")
    assert r2.search(TEXTS[1], k=5, rerank=True)[0] == r.search(TEXTS[1], k=5, rerank=True)[0]


def test_retrieval_bad_input(retrieval):
    _, _, _, bundle = retrieval
    r = Retriever.load(bundle)
    with pytest.raises(ValueError, match="search: the index is empty"):
        r.search("a red circle")
    r.add_images(images(3))
    with pytest.raises(ValueError, match="text: expected a non-empty string"):
        r.search("   ")
    ids, _ = r.search("zebra unicorn", k=2)  # unknown words map to <unk>: still answers
    assert len(ids) == 2
    with pytest.raises(ValueError, match="ids: 1 ids for 2 images"):
        r.add_images(images(2), ids=["x"])


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    answers = ["blue", "circle", "green", "no", "red", "square", "yes", "1", "2"]
    cfg = {
        "kind": "vqa",
        "num_answers": len(answers),
        "dim": 32,
        "text_layers": 1,
        "heads": 2,
        "glimpses": 2,
        "att": 16,
        "max_len": 16,
        "dropout": 0.0,
    }
    return (*make_run(tmp_path_factory, "vqa", cfg, answers), answers)


def test_vqa_answers_identical_to_pytorch(vqa):
    model, tok, prep, bundle, answers = vqa
    imgs = images(5, seed=2)
    qs = [TEXTS[: 1 + i % 3] for i in range(5)]
    v = VQA.load(bundle, threads=1)
    got = v.answer_many(imgs, qs)
    with torch.no_grad():
        regions = model.encode_image(torch.from_numpy(preprocess_batch(imgs, prep)))
        for i, questions in enumerate(qs):
            for j, q in enumerate(questions):
                logits, att = model.answer(regions[i : i + 1], torch.tensor([tok.encode(q)]))
                p = torch.softmax(logits[0], -1)
                assert got[i][j].text == answers[int(p.argmax())]
                assert got[i][j].confidence == pytest.approx(float(p.max()), abs=1e-5)
                np.testing.assert_allclose(got[i][j].attention, att[0].numpy(), atol=1e-5)
    one = v.answer(imgs[0], TEXTS[0])
    assert one.text == got[0][0].text
    with pytest.raises(ValueError, match=r"question .*non-empty string"):
        v.answer(imgs[0], "")


def test_cli_index_search_ask(retrieval, vqa, tmp_path, capsys):
    from PIL import Image

    from mmfast.cli import main

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(images(6, seed=5)):
        Image.fromarray(im).save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    _, _, _, rbundle = retrieval
    assert (
        main(
            [
                "index",
                "build",
                "--model",
                str(rbundle),
                "--images",
                str(folder),
                "--out",
                str(tmp_path / "ix"),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "ix"), TEXTS[0], "-k", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    want, _ = Retriever.load(rbundle, index=tmp_path / "ix").search(TEXTS[0], k=3)
    assert [ln.split("\t")[2] for ln in lines] == want
    assert (
        main(
            [
                "index",
                "build",
                "--model",
                str(rbundle),
                "--images",
                str(tmp_path / "no"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    *_, vbundle, _ = vqa
    assert main(["ask", "--model", str(vbundle), str(folder / "0.png"), TEXTS[0], TEXTS[1]]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and out[0].startswith(TEXTS[0] + "\t")
    assert main(["ask", "--model", str(vbundle), str(folder / "missing.png"), "what"]) == 2
    capsys.readouterr()
    if importlib.util.find_spec("matplotlib") is None:  # the viz extra (in dev): CI has it
        return
    sheet = tmp_path / "sheet.png"
    assert (
        main(["search", "--index", str(tmp_path / "ix"), TEXTS[0], "-k", "3", "--show", str(sheet)])
        == 0
    )
    assert f"contact sheet: {sheet}" in capsys.readouterr().out
    with Image.open(sheet) as im:
        assert im.format == "PNG"
    pic = tmp_path / "ask.png"
    argv = ["ask", "--model", str(vbundle), str(folder / "0.png"), TEXTS[0], TEXTS[1]]
    assert main([*argv, "--show", str(pic)]) == 0
    assert f"answers: {pic}" in capsys.readouterr().out and pic.is_file()


def test_vqa_attention_lies_on_the_region_grid(vqa):
    """An own VQA model's answers carry their glimpses' attention and its layout."""
    model, *_, vbundle, _ = vqa
    a = VQA.load(vbundle).answer(images(1)[0], TEXTS[0])
    g = model.encoder.grid
    assert a.regions is not None and (a.regions.rows, a.regions.cols, a.regions.prefix) == (g, g, 0)
    assert a.attention.shape[-1] == g * g
