"""Torch-free preprocessing and tokenizer (mmfast/preprocess.py, mmfast/tokenizer.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmfast.preprocess import PreprocessConfig, load_rgb, preprocess, resize_matrix, to_rgb
from mmfast.tokenizer import SPECIALS, WORD_LEVEL, SpecialTokens, Tokenizer, split_words


def test_config_json_round_trip(tmp_path: Path) -> None:
    cfg = PreprocessConfig(size=48, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    assert PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg.save(tmp_path / "p.json")
    assert PreprocessConfig.load(tmp_path / "p.json") == cfg
    with pytest.raises(ValueError, match="newer"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "version": 2})
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError):
        PreprocessConfig(size=0)


def test_resize_matrix_rows_sum_to_one_and_identity() -> None:
    for a, b in [(64, 64), (100, 64), (37, 64), (640, 32), (5, 3)]:
        m = resize_matrix(a, b)
        assert m.shape == (b, a)
        np.testing.assert_allclose(m.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(resize_matrix(16, 16), np.eye(16), atol=1e-7)


def test_preprocess_shape_and_normalisation() -> None:
    img = np.full((20, 30, 3), 128, dtype=np.uint8)
    cfg = PreprocessConfig(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = preprocess(img, cfg)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32
    np.testing.assert_allclose(x, (128 / 255 - 0.5) / 0.25, atol=1e-6)


def test_to_rgb_modes(tmp_path: Path) -> None:
    g = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
    assert to_rgb(g).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(to_rgb(g))[..., 0], np.asarray(g))
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent -> white
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 255, 255]
    a16 = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4096).astype(np.uint16)
    im16 = Image.fromarray(a16)
    im16.save(tmp_path / "x16.png")
    rgb = load_rgb(tmp_path / "x16.png")
    assert rgb.mode == "RGB"
    assert np.asarray(rgb)[3, 3, 0] == round(15 * 4096 / 65535 * 255)
    assert to_rgb(Image.new("P", (3, 3))).mode == "RGB"


def test_tokenizer_round_trip(tmp_path: Path) -> None:
    caps = ["A red circle, left of a blue square.", "two shapes : a red circle"]
    tok = Tokenizer.build(caps)
    assert tok.itos[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    ids = tok.encode(caps[0])
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "a red circle , left of a blue square ."
    assert tok.encode("a green circle", add_bos=False, add_eos=False)[1] == tok.unk_id
    tok.save(tmp_path / "vocab.txt")
    assert Tokenizer.load(tmp_path / "vocab.txt") == tok
    assert (tmp_path / "vocab.txt").read_text().splitlines()[:2] == ["<pad>", "<bos>"]
    # built vocabulary does not depend on the order of the captions
    assert Tokenizer.build(reversed(caps)) == tok
    assert split_words("Isn't it? yes.") == ["isn't", "it", "?", "yes", "."]


def test_tokenizer_takes_the_special_ids_it_is_given(tmp_path: Path) -> None:
    assert SPECIALS == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert WORD_LEVEL == SpecialTokens(pad=0, bos=1, eos=2, unk=3)
    words = ["red", "<unk>", "circle", "<pad>", "<eos>", "<bos>"]
    ids = SpecialTokens(pad=3, bos=5, eos=4, unk=1)
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = Tokenizer.load(tmp_path / "vocab.txt", ids)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (3, 5, 4, 1)
    assert tok.encode("red square circle") == [5, 0, 1, 2, 4]
    assert tok.decode([5, 0, 3, 2, 4, 0]) == "red circle"  # skips <bos>, <pad>; stops at <eos>
    assert tok.decode([0, 99]) == "red <unk>"  # an id past the vocabulary reads as <unk>
    with pytest.raises(
        ValueError, match=r"must hold <pad> at id 0, it holds it at id 3 \(6 tokens\)$"
    ):
        Tokenizer(words)  # the word-level ids: <pad> first
    with pytest.raises(
        ValueError, match=r"must hold <bos> at id 9, it holds it at id 5 \(6 tokens\)$"
    ):
        Tokenizer(words, SpecialTokens(pad=3, bos=9, eos=4, unk=1))
    with pytest.raises(ValueError, match="eos: expected a token id"):
        SpecialTokens(pad=0, bos=1, eos=-2, unk=3)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.sampled_from(["red", "circle", "a", "two", ",", "left"]), min_size=1, max_size=12)
)
def test_tokenizer_encode_decode_property(words: list[str]) -> None:
    tok = Tokenizer.build(["red circle a two , left"])
    text = " ".join(words)
    assert tok.decode(tok.encode(text)) == text


def test_runtime_modules_do_not_import_torch() -> None:
    code = (
        "import sys, mmfast.preprocess, mmfast.tokenizer; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.export
@pytest.mark.parametrize("hw", [(64, 64), (97, 131), (23, 40), (200, 150)])
def test_torch_and_numpy_preprocessing_agree(hw: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    from mmfast_export.transforms import preprocess_tensor

    rng = np.random.default_rng(sum(hw))
    img = rng.integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    cfg = PreprocessConfig(size=64, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    ref = preprocess(Image.fromarray(img), cfg)  # numpy/Pillow path
    got = preprocess_tensor(torch.from_numpy(img).permute(2, 0, 1), cfg)[0].numpy()
    assert got.shape == ref.shape == (3, 64, 64)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5)


@pytest.mark.export
def test_torch_preprocessing_refuses_a_hugging_face_processors_config() -> None:
    torch = pytest.importorskip("torch")
    from mmfast_export.transforms import preprocess_tensor

    cfg = PreprocessConfig(size=32, resample="pil_bicubic")
    with pytest.raises(ValueError, match="resample 'pil_bicubic'"):
        preprocess_tensor(torch.zeros(3, 40, 40, dtype=torch.uint8), cfg)
