"""BLIP captioning (``BlipForConditionalGeneration``) exported and run torch-free:
token-identical to ``model.generate(pixel_values=...)`` on real photos (greedy and beams, one
image and several), per-step logits within 1e-4 of transformers, text as the tokenizer decodes.

A tiny config (built in a few seconds) with random weights; a random decoder rarely says [SEP],
so the fixture biases the output layer toward it (some beams then finish early, which is where
beam search implementations differ). The model directory also carries a generation_config.json
that BLIP's generate() does not read (it runs with the text decoder's own settings): the bundle
must not read it either."""

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
from mmfast_export.hf.build import build_blip  # noqa: E402
from mmfast_export.hf.model_dir import ModelDirError  # noqa: E402

# generation settings generate() ignores (the text decoder's are used): a trap for the export
IGNORED_GENERATION = {"num_beams": 3, "max_length": 7, "length_penalty": 2.0}


def _load(model_dir: Path) -> torch.nn.Module:
    return transformers.BlipForConditionalGeneration.from_pretrained(model_dir).eval()


def _bias_sep(model_dir: Path, amount: float) -> None:
    """Make [SEP] (where BLIP's generate stops) likelier by `amount` logits: the output layer's
    bias, saved back."""
    model = _load(model_dir)
    sep = model.config.text_config.sep_token_id
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[sep] += amount
    model.save_pretrained(model_dir)


@pytest.fixture(scope="module")
def blip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, bundle) of a tiny BLIP captioner."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("blip")
    model_dir = build_blip(root / "model", "tiny", seed=1)
    _bias_sep(model_dir, 2.0)
    (model_dir / "generation_config.json").write_text(json.dumps(IGNORED_GENERATION))
    export(model_dir, root / "bundle")
    return model_dir, root / "bundle"


def _pixels(model_dir: Path, images: list[np.ndarray]) -> torch.Tensor:
    proc = transformers.BlipProcessor.from_pretrained(model_dir)
    return proc(images=images, return_tensors="pt").pixel_values


def _generate(model_dir: Path, images: list[np.ndarray], **kw: object) -> list[list[int]]:
    """model.generate on the Hugging Face processor's pixels: generated ids after [DEC], cut
    at [SEP]."""
    model = _load(model_dir)
    with torch.no_grad():
        out = model.generate(pixel_values=_pixels(model_dir, images), **kw)
    cfg = model.config.text_config
    ids = []
    for row in out.tolist():
        assert row[0] == cfg.bos_token_id  # generate starts from [DEC]
        row = row[1:]
        ids.append(row[: row.index(cfg.sep_token_id)] if cfg.sep_token_id in row else row)
    return ids


@pytest.mark.parametrize("beams", [1, 4])
@pytest.mark.parametrize("batch", [1, 6])
def test_tokens_identical_to_generate(blip: tuple[Path, Path], beams: int, batch: int) -> None:
    model_dir, bundle = blip
    images = real_photos()[:batch]
    want = _generate(model_dir, images, num_beams=beams, max_new_tokens=12)
    got = Captioner.load(bundle, threads=1).caption(images, beam_size=beams, max_new_tokens=12)
    assert [c.tokens for c in got] == want
    assert batch == 1 or len({tuple(w) for w in want}) > 1  # the image matters
    assert any(len(w) < 12 for w in want) or beams == 1  # some beams did finish early


def test_beam_settings_follow_generate(blip: tuple[Path, Path]) -> None:
    """3 beams, length_penalty given per call."""
    model_dir, bundle = blip
    images = real_photos()
    cap = Captioner.load(bundle, threads=1)
    for lp in (0.0, 2.0):
        want = _generate(model_dir, images, num_beams=3, max_new_tokens=10, length_penalty=lp)
        got = cap.caption(images, beam_size=3, max_new_tokens=10, length_penalty=lp)
        assert [c.tokens for c in got] == want, lp


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default:UserWarning")
def test_defaults_are_generates(blip: tuple[Path, Path]) -> None:
    """No settings: the bundle decodes as generate(pixel_values) does (greedy, 20 new tokens,
    from [DEC] to [SEP]), not as the ignored generation_config.json says."""
    model_dir, bundle = blip
    images = real_photos()[:3]
    got = Captioner.load(bundle, threads=1).caption(images)
    assert [c.tokens for c in got] == _generate(model_dir, images)
    gen = json.loads((bundle / "manifest.json").read_text())["generation"]
    text = _load(model_dir).config.text_config
    assert gen["decoder_start_token_id"] == text.bos_token_id  # [DEC]
    assert gen["eos_token_id"] == [text.sep_token_id] != [text.eos_token_id]
    assert gen["pad_token_id"] == text.pad_token_id == 0
    assert gen["num_beams"] == 1


def test_text_is_the_tokenizers_decode(blip: tuple[Path, Path]) -> None:
    model_dir, bundle = blip
    proc = transformers.BlipProcessor.from_pretrained(model_dir)
    images = real_photos()[:3]
    got = Captioner.load(bundle, threads=1).caption(images, max_new_tokens=8)
    with torch.no_grad():
        out = _load(model_dir).generate(pixel_values=_pixels(model_dir, images), max_new_tokens=8)
    for c, row in zip(got, out.tolist(), strict=True):
        assert c.text == proc.decode(c.tokens, skip_special_tokens=True)
        # what BLIP's model card prints: generate's whole output, [DEC] and [SEP] skipped
        assert c.text == proc.decode(row, skip_special_tokens=True)


def test_attention_layout_is_cls_then_patches(blip: tuple[Path, Path]) -> None:
    """BLIP's vision tower: [CLS], then (image_size / patch_size)^2 patches."""
    model_dir, bundle = blip
    vision = _load(model_dir).config.vision_config
    g = vision.image_size // vision.patch_size
    c = Captioner.load(bundle, threads=1).caption(real_photos()[:1], return_attention=True)[0]
    assert c.regions is not None and c.attention is not None
    assert (c.regions.rows, c.regions.cols, c.regions.prefix) == (g, g, 1)
    assert c.attention.shape[1] == 1 + g * g


def test_step_logits_match_transformers(blip: tuple[Path, Path]) -> None:
    """The bundle's encoder + step graphs, token by token (ONNX Runtime), against the
    Hugging Face model's logits for the same prefix: within 1e-4 at every step."""
    model_dir, bundle = blip
    model = _load(model_dir)
    cap = Captioner.load(bundle, threads=1)
    pixels = cap.pixels(real_photos()[:3])
    vocab = model.config.text_config.vocab_size
    prefix = torch.randint(0, vocab, (3, 8), generator=torch.Generator().manual_seed(0))
    prefix[:, 0] = model.config.text_config.bos_token_id
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(pixels), input_ids=prefix).logits
    state = cap.encode(pixels)
    for t in range(prefix.shape[1]):
        logits, state, attention = cap._step(prefix[:, t].numpy(), state)
        np.testing.assert_allclose(logits, ref[:, t].numpy(), atol=1e-4, rtol=0)
        # the last layer's cross-attention over [CLS] + the 4 x 4 patches
        assert attention.shape == (3, 17)
        np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-5)


def test_manifest_records_the_checks(blip: tuple[Path, Path]) -> None:
    m = json.loads((blip[1] / "manifest.json").read_text())
    assert m["kind"] == "hf_blip"
    assert m["config"]["architecture"] == "BlipForConditionalGeneration"
    assert m["config"]["text_prompt"] is None  # unconditional captioning only
    assert m["vocab"] == "tokenizer.json"
    assert m["validation"]["generate"]["greedy_tokens_identical"] is True
    assert max(m["validation"]["reference"]["max_abs_err_per_step"]) < 1e-4


def test_built_directory_loads_as_blip(blip: tuple[Path, Path]) -> None:
    """BlipProcessor / AutoTokenizer load the built directory, with BLIP's special tokens."""
    model_dir, _ = blip
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    text = _load(model_dir).config.text_config
    assert tok.pad_token_id == 0 and tok.pad_token == "[PAD]"
    assert tok.convert_tokens_to_ids("[DEC]") == tok.bos_token_id == text.bos_token_id
    assert tok.sep_token_id == text.sep_token_id
    ids = tok("a red circle").input_ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


# ---------------------------------------------------------------------------- bad input


def test_image_size_mismatch(blip: tuple[Path, Path], tmp_path: Path) -> None:
    """A processor making images of another size than the vision model's position table."""
    d = shutil.copytree(blip[0], tmp_path / "m")
    cfg = json.loads((d / "preprocessor_config.json").read_text())
    cfg["size"] = {"height": 48, "width": 48}
    (d / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match=r"48x48 images, the vision model takes 32x32"):
        export(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()
