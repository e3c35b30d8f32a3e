"""Export round trip: a (tiny, untrained) LSTM captioner run -> bundle -> mmfast.Captioner,
ONNX Runtime against PyTorch: step logits within tolerance, greedy and beam captions identical."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.export

torch = pytest.importorskip("torch")

from mmfast.bundle import BundleCorruptError, load_bundle  # noqa: E402
from mmfast.captioner import Captioner  # noqa: E402
from mmfast.preprocess import PreprocessConfig, preprocess_batch  # noqa: E402
from mmfast.tokenizer import Tokenizer  # noqa: E402
from mmfast_export import decoding  # noqa: E402
from mmfast_export.checkpoint import save_weights  # noqa: E402
from mmfast_export.onnx_export import export_run  # noqa: E402
from mmfast_export.runs import build_model  # noqa: E402

WORDS = "a small large red blue green circle square triangle left right of above below".split()


TINY = {
    "caption_lstm": {"embed": 16, "hidden": 32, "att": 16},
    "caption_transformer": {"dim": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module", params=sorted(TINY))
def run_and_bundle(tmp_path_factory, request):
    run = tmp_path_factory.mktemp("run")
    tok = Tokenizer.build([" ".join(WORDS)])
    prep = PreprocessConfig(size=32)
    model_cfg = {
        "kind": request.param,
        "vocab_size": len(tok),
        "encoder": {"image_size": 32, "widths": [8, 16], "blocks": 1},
        "dropout": 0.0,
        "max_len": 12,
        **TINY[request.param],
    }
    torch.manual_seed(0)
    model = build_model("caption", model_cfg)
    head = model.out if request.param == "caption_lstm" else model.head
    with torch.no_grad():  # sharper logits than at init, so near-ties are rare
        head.weight.mul_(8.0)
    save_weights(model, run / "model.safetensors")
    tok.save(run / "vocab.txt")
    cfg = {
        "format": 1,
        "task": "caption",
        "model": model_cfg,
        "preprocess": prep.to_dict(),
        "vocab": "vocab.txt",
    }
    (run / "config.json").write_text(json.dumps(cfg))
    bundle = tmp_path_factory.mktemp("bundle")
    manifest = export_run(run, bundle)
    model.eval()
    return model, prep, bundle, manifest


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (rng.integers(20, 50), rng.integers(20, 50), 3), dtype=np.uint8)
        for _ in range(n)
    ]


def test_manifest_and_validation_report(run_and_bundle):
    _, _, bundle, manifest = run_and_bundle
    b = load_bundle(bundle)
    assert b.task == "caption" and manifest["opset"] >= 17
    assert {"encoder.onnx", "decoder_step.onnx", "vocab.txt"} <= set(b.manifest.files)
    step = manifest["validation"]["decoder_step.onnx"]
    assert step["batch3"]["logits"]["max_abs_err"] <= 1e-4


@pytest.mark.parametrize("beam,alpha", [(1, 0.0), (3, 0.0), (4, 0.7)])
def test_captions_identical_to_pytorch(run_and_bundle, beam, alpha):
    model, prep, bundle, _ = run_and_bundle
    imgs = images(6)
    cap = Captioner.load(bundle, threads=1)
    got = cap.caption(imgs, beam_size=beam, length_penalty=alpha, max_len=12, return_attention=True)
    pixels = torch.from_numpy(preprocess_batch(imgs, prep))
    with torch.no_grad():
        state = model.encode(pixels)
        if beam == 1:
            want = decoding.greedy(model, state, 12)
        else:
            want = decoding.beam_search(model, state, 12, beam=beam, length_penalty=alpha)
    assert [c.tokens for c in got] == want.tokens
    np.testing.assert_allclose([c.score for c in got], want.scores.numpy(), atol=1e-4)
    for c, a in zip(got, want.attention, strict=True):
        np.testing.assert_allclose(c.attention, a.numpy(), atol=1e-4)


def test_bad_inputs(run_and_bundle, tmp_path):
    _, _, bundle, _ = run_and_bundle
    cap = Captioner.load(bundle)
    with pytest.raises(FileNotFoundError, match=r"images\[0\]: no such file"):
        cap.caption([tmp_path / "missing.png"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"images\[0\]: cannot read"):
        cap.caption([bad])
    with pytest.raises(ValueError, match="beam_size"):
        cap.caption(images(1), beam_size=0)
    with pytest.raises(ValueError, match="images: nothing"):
        cap.caption([])
    # a tampered bundle is refused before any session is built
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    with open(copy / "decoder_step.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleCorruptError):
        Captioner.load(copy)


def test_cli_caption(run_and_bundle, tmp_path, capsys):
    from PIL import Image

    from mmfast.cli import main

    _, _, bundle, _ = run_and_bundle
    paths = []
    for i, im in enumerate(images(2, seed=3)):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(im).save(paths[-1])
    assert main(["caption", "--model", str(bundle), *paths, "--beam", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    want = Captioner.load(bundle).caption(paths, beam_size=2)
    assert [ln.split("\t")[1] for ln in lines] == [c.text for c in want]
    assert main(["caption", "--model", str(tmp_path / "nope"), *paths]) == 2


def test_attention_pictures(run_and_bundle, tmp_path, capsys):
    """The step's attention lies on the encoder's region grid (S / 2^stages cells a side, no
    [CLS]); `caption --show-attention` draws one panel per word and the end, per image."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from mmfast import viz
    from mmfast.cli import main

    model, _, bundle, _ = run_and_bundle
    paths = []
    for i, im in enumerate(images(2, seed=5)):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(im).save(paths[-1])
    c = Captioner.load(bundle).caption(paths, max_len=12, return_attention=True)
    g = model.encoder.grid
    for cap in c:
        assert cap.regions is not None and (cap.regions.rows, cap.regions.cols) == (g, g)
        assert cap.regions.prefix == 0 and cap.attention.shape[1] == g * g
        assert cap.words == [Captioner.load(bundle).tokenizer.decode([t]) for t in cap.tokens]
    fig = viz.attention_grid(paths[0], c[0])
    assert len(fig.axes) == 1 + len(c[0].attention)
    out = tmp_path / "att.png"
    assert (
        main(["caption", "--model", str(bundle), *map(str, paths), "--show-attention", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    for i in (1, 2):
        assert f"attention: {tmp_path / f'att-{i}.png'}" in printed
        with Image.open(tmp_path / f"att-{i}.png") as im:
            assert im.format == "PNG" and im.width > 200
    assert not out.exists()  # several images: numbered files
    bad = ["caption", "--model", str(bundle), str(paths[0]), "--show-attention"]
    assert main([*bad, str(tmp_path / "nosuffix")]) == 2
    assert main([*bad, str(tmp_path / "no" / "a.png")]) == 2
    assert "the folder" in capsys.readouterr().err


def test_odd_images_are_captioned(run_and_bundle, tmp_path):
    from PIL import Image

    _, _, bundle, _ = run_and_bundle
    cap = Captioner.load(bundle)
    odd = [
        Image.new("L", (1, 1), 128),  # 1x1 grayscale
        Image.new("RGBA", (9, 5), (255, 0, 0, 0)),  # transparent
        Image.fromarray((np.arange(400, dtype=np.uint16) * 150).reshape(20, 20)),  # 16-bit
        Image.new("P", (30, 12)),  # palette
        Image.new("RGB", (4000, 3000), (20, 200, 30)),  # large photo
    ]
    paths = []
    for i, im in enumerate(odd):
        paths.append(tmp_path / f"odd{i}.png")
        im.save(paths[-1])
    from_files = cap.caption(paths)
    from_memory = cap.caption(odd)
    assert [c.tokens for c in from_files] == [c.tokens for c in from_memory]
    assert all(isinstance(c.text, str) for c in from_files)


def test_pipeline_runs_with_torch_blocked(run_and_bundle, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    _, _, bundle, _ = run_and_bundle
    img = tmp_path / "x.png"
    Image.fromarray(images(1, seed=9)[0]).save(img)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import mmfast\n"
        f"c = mmfast.Captioner.load({str(bundle)!r}).caption([{str(img)!r}], beam_size=2)\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print(c[0].tokens)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    want = Captioner.load(bundle).caption([img], beam_size=2)[0].tokens
    assert r.stdout.strip() == str(want)


def test_concurrent_callers(run_and_bundle):
    import threading

    _, _, bundle, _ = run_and_bundle
    cap = Captioner.load(bundle, threads=1)
    imgs = images(8, seed=11)
    want = [c.tokens for c in cap.caption(imgs)]
    got: dict[int, list[list[int]]] = {}

    def work(i: int) -> None:
        got[i] = [c.tokens for c in cap.caption(imgs[i:] + imgs[:i])]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(6):
        assert got[i] == want[i:] + want[:i]
