"""Hugging Face captioners (VisionEncoderDecoder: ViT/DeiT + GPT-2) exported and run
torch-free: token-identical to ``model.generate`` on real photos, per-step logits within 1e-4
of transformers, and clear errors for directories that cannot be exported.

Tiny configs (built in about a second) with random weights; a random decoder rarely says
<eos>, so the checks also bias the output layer toward it (some beams then finish early, which
is where beam search implementations differ)."""

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

from mmfast import Captioner  # noqa: E402
from mmfast_export import export  # noqa: E402
from mmfast_export.hf.build import build_vit_gpt2  # noqa: E402
from mmfast_export.hf.export import UnsupportedArchitectureError  # noqa: E402
from mmfast_export.hf.model_dir import ModelDirError  # noqa: E402


def _bias_eos(model_dir: Path, amount: float) -> None:
    """Make <eos> likelier by `amount` logits, saved back: the output layer's bias (BERT), or
    for GPT-2, which has none, the last layer norm's bias pushed along <eos>'s embedding (tied
    with the output layer)."""
    model = transformers.VisionEncoderDecoderModel.from_pretrained(model_dir)
    dec = model.decoder
    eos = model.generation_config.eos_token_id
    out = dec.get_output_embeddings()
    with torch.no_grad():
        if out.bias is not None:
            out.bias[eos] += amount
        else:
            e = out.weight[eos].detach()
            dec.transformer.ln_f.bias += amount * e / e.dot(e)
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def ved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, bundle) of a tiny ViT + GPT-2 captioner."""
    root = tmp_path_factory.mktemp("hf")
    model_dir = build_vit_gpt2(root / "model", "tiny", seed=1)
    _bias_eos(model_dir, 3.0)
    export(model_dir, root / "bundle")
    return model_dir, root / "bundle"


def _generate(model_dir: Path, images: list[np.ndarray], **kw: object) -> list[list[int]]:
    """model.generate on the Hugging Face processor's pixels: generated ids, cut at <eos>."""
    model = transformers.VisionEncoderDecoderModel.from_pretrained(model_dir).eval()
    proc = transformers.AutoImageProcessor.from_pretrained(model_dir)
    pixels = proc(images=images, return_tensors="pt").pixel_values
    with torch.no_grad():
        out = model.generate(pixel_values=pixels, **kw)
    eos = model.generation_config.eos_token_id
    ids = []
    for row in out.tolist():
        row = row[1:]
        ids.append(row[: row.index(eos)] if eos in row else row)
    return ids


def _assert_greedy_and_beam_like_generate(
    model_dir: Path, bundle: Path, images: list[np.ndarray]
) -> None:
    """Greedy and 3 beams, 10 new tokens: the bundle's tokens are generate()'s."""
    cap = Captioner.load(bundle)
    for beams in (1, 3):
        want = _generate(model_dir, images, num_beams=beams, max_new_tokens=10)
        got = cap.caption(images, beam_size=beams, max_new_tokens=10)
        assert [c.tokens for c in got] == want, beams


@pytest.mark.parametrize("beams", [1, 4])
@pytest.mark.parametrize("batch", [1, 6])
def test_tokens_identical_to_generate(ved: tuple[Path, Path], beams: int, batch: int) -> None:
    model_dir, bundle = ved
    images = real_photos()[:batch]
    want = _generate(model_dir, images, num_beams=beams, max_new_tokens=12)
    got = Captioner.load(bundle).caption(images, beam_size=beams, max_new_tokens=12)
    assert [c.tokens for c in got] == want
    assert any(len(w) < 12 for w in want) or beams == 1  # some beams did finish early


def test_beam_settings_follow_generate(ved: tuple[Path, Path]) -> None:
    """length_penalty given per call, the rest from the bundle's generation config."""
    model_dir, bundle = ved
    images = real_photos()
    cap = Captioner.load(bundle)
    for lp in (0.0, 2.0, -1.0):
        want = _generate(model_dir, images, num_beams=3, max_new_tokens=10, length_penalty=lp)
        got = cap.caption(images, beam_size=3, max_new_tokens=10, length_penalty=lp)
        assert [c.tokens for c in got] == want, lp


def test_text_is_the_tokenizers_decode(ved: tuple[Path, Path]) -> None:
    model_dir, bundle = ved
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    for c in Captioner.load(bundle).caption(real_photos()[:3], max_new_tokens=8):
        assert c.text == tok.decode(c.tokens, skip_special_tokens=True)


def test_step_logits_match_transformers(ved: tuple[Path, Path]) -> None:
    """The bundle's encoder + step graphs, token by token (ONNX Runtime), against the
    Hugging Face model's logits for the same prefix: within 1e-4 at every step."""
    model_dir, bundle = ved
    model = transformers.VisionEncoderDecoderModel.from_pretrained(model_dir).eval()
    cap = Captioner.load(bundle)
    pixels = cap.pixels(real_photos()[:3])
    prefix = torch.randint(
        0, model.decoder.config.vocab_size, (3, 8), generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(pixels), decoder_input_ids=prefix).logits
    state = cap.encode(pixels)
    for t in range(prefix.shape[1]):
        logits, state, _ = cap._step(prefix[:, t].numpy(), state)
        np.testing.assert_allclose(logits, ref[:, t].numpy(), atol=1e-4, rtol=0)


def test_attention_is_the_last_cross_attention_over_the_patches(ved: tuple[Path, Path]) -> None:
    """Caption.attention: transformers' last decoder layer's cross-attention averaged over
    heads, step by step (within 1e-5, float32 softmax outputs); its layout: [CLS] first,
    then the (image_size / patch_size)^2 patches."""
    model_dir, bundle = ved
    model = transformers.VisionEncoderDecoderModel.from_pretrained(
        model_dir, attn_implementation="eager"
    ).eval()
    cap = Captioner.load(bundle)
    pixels = cap.pixels(real_photos()[:2])
    prefix = torch.randint(
        0, model.decoder.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        out = model(
            pixel_values=torch.from_numpy(pixels), decoder_input_ids=prefix, output_attentions=True
        )
    ref = out.cross_attentions[-1].mean(dim=1)  # (B, H, T, N) -> (B, T, N)
    state = cap.encode(pixels)
    for t in range(prefix.shape[1]):
        _, state, att = cap._step(prefix[:, t].numpy(), state)
        np.testing.assert_allclose(att, ref[:, t].numpy(), atol=1e-5, rtol=0)
    enc = model.config.encoder
    g = enc.image_size // enc.patch_size
    c = cap.caption(real_photos()[:1], max_new_tokens=4, return_attention=True)[0]
    assert c.regions is not None
    assert (c.regions.rows, c.regions.cols, c.regions.prefix) == (g, g, 1)


def test_deit_encoder(tmp_path: Path) -> None:
    model_dir = build_vit_gpt2(tmp_path / "model", "tiny", seed=2, encoder="deit")
    _bias_eos(model_dir, 3.0)
    export(model_dir, tmp_path / "bundle")
    _assert_greedy_and_beam_like_generate(model_dir, tmp_path / "bundle", real_photos()[:3])
    # DeiT puts [CLS] and the distillation token before the patches
    c = Captioner.load(tmp_path / "bundle").caption(real_photos()[:1], return_attention=True)[0]
    assert c.regions is not None and c.regions.prefix == 2


def test_manifest_records_the_checks(ved: tuple[Path, Path]) -> None:
    m = json.loads((ved[1] / "manifest.json").read_text())
    assert m["kind"] == "hf_vision_encoder_decoder"
    assert m["vocab"] == "tokenizer.json"
    assert m["validation"]["generate"]["greedy_tokens_identical"] is True
    assert max(m["validation"]["reference"]["max_abs_err_per_step"]) < 1e-4


# ---------------------------------------------------------------------------- bad input


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _no_bundle_left(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_missing_weights(ved: tuple[Path, Path], tmp_path: Path) -> None:
    d = _copy(ved[0], tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelDirError, match="no weights"):
        export(d, tmp_path / "out")
    _no_bundle_left(tmp_path / "out")


def test_missing_tokenizer(ved: tuple[Path, Path], tmp_path: Path) -> None:
    d = _copy(ved[0], tmp_path / "m")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match="no tokenizer"):
        export(d, tmp_path / "out")
    _no_bundle_left(tmp_path / "out")


def test_unsupported_architecture(tmp_path: Path) -> None:
    d = tmp_path / "bert"
    transformers.BertModel(
        transformers.BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(d)
    (d / "tokenizer.json").write_text("{}")
    (d / "preprocessor_config.json").write_text("{}")
    with pytest.raises(UnsupportedArchitectureError, match=r"BertModel.*VisionEncoderDecoderModel"):
        export(d, tmp_path / "out")
    _no_bundle_left(tmp_path / "out")


def test_tokenizer_larger_than_vocab(ved: tuple[Path, Path], tmp_path: Path) -> None:
    """A tokenizer of another model: more tokens than the decoder's embedding table."""
    d = _copy(ved[0], tmp_path / "m")
    from mmfast_export.hf.build import train_tokenizer

    words = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "xyzqjvw"]
    big = train_tokenizer([" ".join(words[i:]) for i in range(0, len(words), 7)], 1000)
    vocab = transformers.AutoConfig.from_pretrained(d).decoder.vocab_size
    assert len(big) > vocab
    (d / "tokenizer.json").unlink()
    big.save_pretrained(d)
    with pytest.raises(ModelDirError, match="more than the decoder's vocab_size"):
        export(d, tmp_path / "out")
    _no_bundle_left(tmp_path / "out")


def test_failed_export_keeps_the_old_bundle(ved: tuple[Path, Path], tmp_path: Path) -> None:
    out = _copy(ved[1], tmp_path / "bundle")
    before = (out / "manifest.json").read_bytes()
    d = _copy(ved[0], tmp_path / "m")
    (d / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelDirError, match="weights cannot be loaded"):
        export(d, out)
    assert (out / "manifest.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.")]


def test_out_that_is_not_a_bundle_is_refused(ved: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "docs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a bundle"):
        export(ved[0], out)
    assert (out / "notes.txt").read_text() == "mine"


def test_bert_decoder(tmp_path: Path) -> None:
    """VisionEncoderDecoder with a BERT-style decoder (BertLMHeadModel + cross-attention), as
    ViT + BERT captioners are built: same export, same token identity."""
    from mmfast_export.hf.build import shapes_captions, train_wordpiece

    tok = train_wordpiece(shapes_captions(100))
    enc = transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    dec = transformers.BertConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(tok),
        is_decoder=True,
        add_cross_attention=True,
        initializer_range=0.1,
    )
    cfg = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = tok.cls_token_id
    cfg.eos_token_id, cfg.pad_token_id = tok.sep_token_id, tok.pad_token_id
    torch.manual_seed(3)
    model = transformers.VisionEncoderDecoderModel(cfg).eval()
    model.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
        max_length=21,
    )
    d = tmp_path / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(d)
    _bias_eos(d, 3.0)
    export(d, tmp_path / "bundle")
    _assert_greedy_and_beam_like_generate(d, tmp_path / "bundle", real_photos()[:4])


def test_caption_arguments(ved: tuple[Path, Path]) -> None:
    """max_new_tokens is bounded by the model's positions (tiny GPT-2: 64); max_len is its
    old name; Hugging Face's length penalty may be negative."""
    cap = Captioner.load(ved[1])
    image = real_photos()[:1]
    with pytest.raises(ValueError, match="max_new_tokens: this model decodes at most 64"):
        cap.caption(image, max_new_tokens=65)
    with pytest.raises(ValueError, match="give one"):
        cap.caption(image, max_new_tokens=5, max_len=6)
    assert cap.caption(image, max_len=5) == cap.caption(image, max_new_tokens=5)
    assert len(cap.caption(image, max_new_tokens=3)[0].tokens) <= 3
    cap.caption(image, beam_size=2, length_penalty=-1.0)
    with pytest.raises(ValueError, match="length_penalty"):
        cap.caption(image, beam_size=2, length_penalty=float("nan"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("{", "unreadable"),
        ("[]", "not a JSON object"),
    ],
)
def test_unreadable_processor_config(
    ved: tuple[Path, Path], tmp_path: Path, text: str, message: str
) -> None:
    d = _copy(ved[0], tmp_path / "m")
    (d / "preprocessor_config.json").write_text(text)
    with pytest.raises(ModelDirError, match=message):
        export(d, tmp_path / "out")
    _no_bundle_left(tmp_path / "out")


def test_corrupt_tokenizer(ved: tuple[Path, Path], tmp_path: Path) -> None:
    d = _copy(ved[0], tmp_path / "m")
    (d / "tokenizer.json").write_text('{"model": 3}')
    with pytest.raises(ModelDirError, match="the tokenizer cannot be loaded"):
        export(d, tmp_path / "out")
    _no_bundle_left(tmp_path / "out")


def test_default_length_is_generates(tmp_path: Path) -> None:
    """A generation config without max_length: caption() with no arguments decodes as long as
    this transformers' generate() does by default (20 new tokens in 4.57 and 5.x, by different
    rules)."""
    d = build_vit_gpt2(tmp_path / "model", "tiny", seed=4, generation={"max_length": None})
    _bias_eos(d, -10.0)  # <eos> never comes: the length limit ends every caption
    export(d, tmp_path / "bundle")
    images = real_photos()[:2]
    want = _generate(d, images)  # generate()'s own default length
    got = Captioner.load(tmp_path / "bundle").caption(images)
    assert [c.tokens for c in got] == want
    assert max(len(w) for w in want) > 15  # the limit, not <eos>, ended them


def test_no_eos_anywhere(ved: tuple[Path, Path], tmp_path: Path) -> None:
    d = _copy(ved[0], tmp_path / "m")
    for name in ("generation_config.json", "config.json"):
        cfg = json.loads((d / name).read_text())
        cfg.pop("eos_token_id", None)
        cfg.get("decoder", {}).pop("eos_token_id", None)
        (d / name).write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match="no eos_token_id"):
        export(d, tmp_path / "out")
    _no_bundle_left(tmp_path / "out")


def test_cli_export_and_caption(
    ved: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mmfast export MODEL_DIR --out BUNDLE`, then `mmfast caption`; a bad directory is one
    line on stderr and status 2."""
    from mmfast import cli as runtime_cli
    from mmfast_export import cli

    assert cli.main_export([str(ved[0]), "--out", str(tmp_path / "b"), "--task", "caption"]) == 0
    out = capsys.readouterr().out
    assert "exported hf_vision_encoder_decoder" in out and "tokens identical" in out
    image = tmp_path / "astronaut.png"
    from PIL import Image

    Image.fromarray(real_photos()[0]).save(image)
    assert runtime_cli.main(["caption", "--model", str(tmp_path / "b"), str(image)]) == 0
    want = Captioner.load(ved[1]).caption([str(image)])[0].text
    assert capsys.readouterr().out.startswith(f"{image}\t{want}\t")
    assert cli.main_export([str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmfast export: ") and "\n" not in err
