"""evaluate_retrieval and `mmfast eval retrieval` with a stand-in retriever (fixed, unnormalised
embeddings; no bundle, no torch): batching, normalisation, the table, the JSON, errors. The
same command on a real exported bundle: tests/export/test_eval_retrieval.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from mmfast.cli import main
from mmfast.karpathy import KarpathyImage, read_karpathy, write_karpathy
from mmfast.retrieval_eval import evaluate_retrieval
from mmfast.retrieval_metrics import retrieval_metrics

D = 8


class FakeRetriever:
    """Embeds by lookup: image file name -> vector, caption -> vector (norms vary)."""

    def __init__(self, images: dict[str, np.ndarray], texts: dict[str, np.ndarray]) -> None:
        self.images, self.texts = images, texts
        self.batches: list[int] = []

    def embed_images(self, images: Sequence[str | Path]) -> dict[str, np.ndarray]:
        self.batches.append(len(images))
        return {"image_embedding": np.stack([self.images[Path(p).name] for p in images])}

    def embed_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        self.batches.append(len(texts))
        return {"text_embedding": np.stack([self.texts[t] for t in texts])}


def make_dataset(tmp_path: Path, n_images: int = 9, seed: int = 0):
    """A Karpathy file (test split: images with 1-6 captions), its image files (empty: the
    stand-in does not read them) and a stand-in whose captions sit near their images."""
    rng = np.random.default_rng(seed)
    root = tmp_path / "images"
    (root / "test").mkdir(parents=True)
    entries, img_vec, txt_vec = [], {}, {}
    for i in range(n_images):
        name = f"{i:03d}.png"
        (root / "test" / name).write_bytes(b"")
        img_vec[name] = rng.standard_normal(D).astype(np.float32) * rng.uniform(0.5, 3)
        caps = tuple(f"caption {i}.{j}" for j in range(int(rng.integers(1, 7))))
        for c in caps:
            v = img_vec[name] / np.linalg.norm(img_vec[name]) + 0.9 * rng.standard_normal(D)
            txt_vec[c] = (v * rng.uniform(0.5, 3)).astype(np.float32)
        entries.append(KarpathyImage(name, "test", caps, "test"))
    entries.append(KarpathyImage("train.png", "train", ("not in the test split",), "train"))
    path = tmp_path / "dataset_fake.json"
    write_karpathy(path, entries, dataset="fake")
    return path, root, FakeRetriever(img_vec, txt_vec)


def expected(fake: FakeRetriever, split) -> dict[str, float | int]:
    """The metrics of the cosine matrix, built whole here in float64."""
    img = np.stack([fake.images[p.name] for p in split.image_paths]).astype(np.float64)
    txt = np.stack([fake.texts[c] for c in split.captions]).astype(np.float64)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return retrieval_metrics(txt @ img.T, split.image_of_text).as_dict()


def test_evaluate_retrieval_batches_and_normalises(tmp_path):
    path, root, fake = make_dataset(tmp_path)
    split = read_karpathy(path, root, "test")
    got = evaluate_retrieval(fake, split, batch_size=4)
    want = expected(fake, split)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key]), key
    assert got["n_images"] == 9 and got["n_texts"] == len(split.captions)
    assert max(fake.batches) <= 4
    assert sum(fake.batches) == 9 + len(split.captions)  # every item embedded once


def test_missing_image_is_found_before_embedding(tmp_path):
    path, root, fake = make_dataset(tmp_path)
    (root / "test" / "004.png").unlink()
    split = read_karpathy(path, root, "test")
    with pytest.raises(
        FileNotFoundError, match=r"1 of the split's 9 images are missing \(first: .*/004\.png\)"
    ):
        evaluate_retrieval(fake, split)
    assert fake.batches == []


def test_embedding_count_mismatch(tmp_path):
    path, root, fake = make_dataset(tmp_path)
    split = read_karpathy(path, root, "test")

    class Short(FakeRetriever):
        def embed_texts(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
            return {"text_embedding": super().embed_texts(texts)["text_embedding"][:-1]}

    with pytest.raises(ValueError, match=r"captions\[0:\]: 3 inputs gave embeddings \(2, 8\)"):
        evaluate_retrieval(Short(fake.images, fake.texts), split, batch_size=3)


@pytest.fixture
def fake_cli(tmp_path, monkeypatch):
    from mmfast.retriever import Retriever

    path, root, fake = make_dataset(tmp_path)
    loaded: list[str] = []

    def load(bundle, device="cpu", threads=None, index=None):
        loaded.append(bundle)
        return fake

    monkeypatch.setattr(Retriever, "load", load)
    return path, root, fake, loaded


def test_cli_table_and_json(fake_cli, tmp_path, capsys):
    path, root, fake, loaded = fake_cli
    out = tmp_path / "m.json"
    argv = ["eval", "retrieval", "--model", "B", "--karpathy", str(path), "--images", str(root)]
    rc = main([*argv, "--json", str(out), "--quiet", "--batch-size", "5"])
    stdout = capsys.readouterr().out
    assert rc == 0 and loaded == ["B"]
    report = json.loads(out.read_text())
    split = read_karpathy(path, root, "test", captions_per_image=5)  # the CLI's default
    want = expected(fake, split)
    for key in want:
        assert report[key] == pytest.approx(want[key]), key
    assert report["split"] == "test" and report["dataset"] == "fake"
    lines = stdout.splitlines()
    assert lines[0] == f"fake test: 9 images, {len(split.captions)} captions"
    assert lines[1].split() == ["R@1", "R@5", "R@10", "medR", "meanR"]
    for line, d in zip(lines[2:4], ("t2i", "i2t"), strict=True):
        keys = [f"{d}_r1", f"{d}_r5", f"{d}_r10", f"{d}_median_rank", f"{d}_mean_rank"]
        values = [float(x) for x in line.split()[1:]]
        assert values == pytest.approx([want[k] for k in keys], abs=0.006)
    assert lines[4].startswith(f"rSUM {want['rsum']:.2f}")


def test_cli_json_to_stdout_and_options(fake_cli, capsys):
    path, root, fake, _ = fake_cli
    argv = ["eval", "retrieval", "--model", "B", "--karpathy", str(path), "--images", str(root)]
    assert main([*argv, "--json", "-", "--quiet", "--limit", "4", "--captions-per-image", "0"]) == 0
    report = json.loads(capsys.readouterr().out)  # only the JSON on stdout
    split = read_karpathy(path, root, "test", limit=4)  # 0: every caption
    assert (report["n_images"], report["n_texts"]) == (4, len(split.captions))
    assert report["rsum"] == pytest.approx(expected(fake, split)["rsum"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--split", "dev"], r"split 'dev': expected one of"),
        (["--split", "val"], r"no images in split 'val'"),
        (["--limit", "0"], r"limit: expected a positive int"),
        (["--batch-size", "0"], r"batch_size: expected a positive int"),
    ],
)
def test_cli_errors_are_one_line(fake_cli, capsys, extra, message):
    path, root, _, _ = fake_cli
    argv = ["eval", "retrieval", "--model", "B", "--karpathy", str(path), "--images", str(root)]
    assert main([*argv, "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mmfast eval retrieval: ")
    assert re.search(message, err), err


def test_cli_missing_images_and_file(fake_cli, tmp_path, capsys):
    path, root, _, _ = fake_cli
    argv = ["eval", "retrieval", "--model", "B", "--quiet"]
    assert main([*argv, "--karpathy", str(path), "--images", str(tmp_path / "nowhere")]) == 2
    assert "9 of the split's 9 images are missing" in capsys.readouterr().err
    assert main([*argv, "--karpathy", str(tmp_path / "no.json"), "--images", str(root)]) == 2
    assert "no.json" in capsys.readouterr().err


def test_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from mmfast import karpathy, retrieval_eval, retrieval_metrics\n"
        "print(retrieval_metrics.retrieval_metrics(np.eye(3), np.arange(3)).rsum)\n"
        "print(sorted(m for m in ('onnxruntime', 'mmfast_export') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["600.0", "[]"]
