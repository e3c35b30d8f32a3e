"""What a careless caller or a hostile file gets from the pipelines and the CLI: a typed error
naming the argument or the file (a BundleError subclass, ValueError, TypeError or an OSError
subclass), and from the CLI one line ``mmfast COMMAND: MESSAGE`` with status 2, never a
traceback. Silent wrong answers (NaN scores, a vocabulary that does not fit the model) are
refused; unbounded work (huge beams, decoding lengths, thread counts, images) is capped.

Torch-free: the captioner is test_manifest's chain captioner (a step graph that ignores the
image). The retriever and VQA cases, which need exported models, are in
export/test_bundle_errors.py.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmfast._checks import finite_float, positive_int
from mmfast.bundle import BundleFormatError, BundleGraphError, BundleMismatchError, sha256_file
from mmfast.cli import main
from mmfast.index import EmbeddingIndex
from mmfast.preprocess import MAX_IMAGE_SIDE, MAX_SIZE, PreprocessConfig, load_rgb, preprocess
from mmfast.session import MAX_THREADS

onnx = pytest.importorskip("onnx")

from test_manifest import IDS, WORDS, chain_captioner  # noqa: E402

from mmfast.captioner import (  # noqa: E402
    MAX_BEAM_SIZE,
    MAX_CAPTION_LEN,
    MAX_LENGTH_PENALTY,
    Captioner,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------------------- helpers


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, which must fail with status 2 and exactly one line on stderr."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def tampered(
    src: Path,
    dst: Path,
    files: dict[str, bytes] | None = None,
    manifest: Callable[[dict[str, Any]], object] | None = None,
) -> Path:
    """A copy of bundle `src` at `dst` with `files` replaced and `manifest` applied to its
    manifest, whose sha256 entries are brought up to date (as someone who edits a bundle on
    purpose would), but which is not otherwise checked."""
    shutil.copytree(src, dst)
    for name, data in (files or {}).items():
        (dst / name).write_bytes(data)
    m = json.loads((dst / "manifest.json").read_text())
    if manifest is not None:
        manifest(m)
    m["files"] = {name: sha256_file(dst / name) for name in m["files"]}
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def png(path: Path, width: int, height: int, mode: str = "L") -> Path:
    Image.new(mode, (width, height), 100).save(path)
    return path


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A caption bundle (word-level vocabulary of 7, images 8 x 8)."""
    return chain_captioner(tmp_path_factory.mktemp("chain") / "b", IDS)


@pytest.fixture(scope="module")
def cap(chain: Path) -> Captioner:
    return Captioner.load(chain, threads=1)


IMAGE = np.zeros((8, 8, 3), np.uint8)


# --------------------------------------------------------------- the argument checks


@pytest.mark.parametrize("value", [True, False, 2.0, "2", None, 0, -1, np.float32(2)])
def test_positive_int_refuses_what_is_not_one(value):
    with pytest.raises(ValueError, match=r"^k: expected a positive int"):
        positive_int("k", value)


def test_positive_int_takes_numpy_integers_and_caps():
    assert positive_int("k", np.int64(3)) == 3 and type(positive_int("k", np.int64(3))) is int
    with pytest.raises(ValueError, match=r"^k: at most 5, got 6"):
        positive_int("k", 6, at_most=5)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.5, 11.0, True, "0.5", None])
def test_finite_float_refuses_nan_inf_out_of_range_and_non_numbers(value):
    with pytest.raises(ValueError, match=r"^alpha: expected a number"):
        finite_float("alpha", value, lo=0.0, hi=10.0)


# ------------------------------------------------------------------------ image files


def test_image_file_errors_keep_their_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "missing.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(IsADirectoryError):  # was a ValueError
        load_rgb(tmp_path / "dir.png")


@pytest.mark.skipif(IS_ROOT, reason="root reads any file")
def test_an_unreadable_image_is_a_permission_error(tmp_path):
    p = png(tmp_path / "x.png", 4, 4)
    p.chmod(0)
    try:
        with pytest.raises(PermissionError):
            load_rgb(p)
    finally:
        p.chmod(0o600)


def undecodable(tmp_path: Path) -> dict[str, Path]:
    noise = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "good.png")  # noise: the pixels fill the file
    good = (tmp_path / "good.png").read_bytes()
    files = {"garbage": b"not an image", "empty": b"", "truncated": good[:200]}
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / f"{name}.png"
        out[name].write_bytes(data)
    return out


@pytest.mark.parametrize("name", ["garbage", "empty", "truncated"])
def test_an_undecodable_image_is_a_value_error(name, tmp_path):
    with pytest.raises(ValueError, match=r"not an image file Pillow can read|cannot decode it"):
        load_rgb(undecodable(tmp_path)[name])


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        # over Pillow's limit: Pillow itself only warns (and decodes) up to twice the limit,
        (40, 30, r"40 x 30 = 1200 px is over Pillow's limit of 1000 px"),
        # and raises its own DecompressionBombError (not a ValueError) past that
        (50, 50, r"Image size \(2500 pixels\) exceeds limit of 2000 pixels"),
    ],
)
def test_an_image_over_the_pixel_limit_is_refused(width, height, message, tmp_path, monkeypatch):
    p = png(tmp_path / "big.png", width, height)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a stand-in for 89.5 MP
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(ValueError, match=message):
            load_rgb(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's way to lift the limit
    assert load_rgb(p).size == (width, height)


@pytest.mark.parametrize("size", [(MAX_IMAGE_SIDE + 1, 1), (1, MAX_IMAGE_SIDE + 1)])
def test_an_image_side_over_the_limit_is_refused_before_decoding(size, tmp_path):
    # within the pixel limit, but resizing would cost side x model size memory: a 80 million
    # pixel wide strip needed ~20 GB
    p = png(tmp_path / "strip.png", *size)
    with pytest.raises(ValueError, match=r"each side must be 1\.\.32768 px"):
        load_rgb(p)
    with pytest.raises(ValueError, match=r"each side must be 1\.\.32768 px"):
        preprocess(np.zeros((size[1], size[0], 3), np.uint8), PreprocessConfig(size=8))
    ok = np.zeros((2, MAX_IMAGE_SIDE, 3), np.uint8)
    assert preprocess(ok, PreprocessConfig(size=8)).shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": MAX_SIZE + 1}, "size must be in 1..4096"),
        ({"size": 0}, "size must be in 1..4096"),
        ({"std": (float("nan"),) * 3}, "mean and std must be finite"),
        ({"mean": (0.5, float("inf"), 0.5)}, "mean and std must be finite"),
    ],
)
def test_preprocess_config_limits(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(**kwargs)


# ------------------------------------------------------------- a bundle that is broken


def _vocab(words: list[str]) -> bytes:
    return ("\n".join(words) + "\n").encode()


def _set(*path_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *path, last, value = path_and_value

    def edit(m: dict[str, Any]) -> None:
        for key in path:
            m = m[key]
        m[last] = value

    return edit


BROKEN = [  # id, replaced files, manifest edit, error, message
    ("garbage encoder", {"encoder.onnx": b"garbage"}, None, BundleGraphError,
     r"encoder\.onnx: ONNX Runtime cannot load it \(.*INVALID_PROTOBUF"),
    ("empty encoder", {"encoder.onnx": b""}, None, BundleGraphError,
     r"encoder\.onnx: ONNX Runtime cannot load it"),
    ("truncated step", {"decoder_step.onnx": "TRUNCATED"}, None, BundleGraphError,
     r"decoder_step\.onnx: ONNX Runtime cannot load it"),
    ("graphs swapped", {"encoder.onnx": "decoder_step.onnx"}, None, BundleMismatchError,
     r"encoder\.onnx: takes inputs \['tokens', 'h'\], Captioner feeds it \['images'\]"),
    ("state update from no output", None, _set("decoder", "state_updates", {"h": "nope"}),
     BundleMismatchError, r"decoder_step\.onnx: no output nope"),
    ("state update of no state", None, _set("decoder", "state_updates", {"zz": "h_out"}),
     BundleMismatchError, r"decoder\.state_updates names zz, which encoder\.onnx does not make"),
    ("vocabulary shorter than the logits", {"vocab.txt": _vocab(WORDS[:-1])}, None,
     BundleMismatchError, r"'logits' has size 7 on axis -1, but the vocabulary vocab\.txt has 6"),
    ("vocabulary longer than the logits", {"vocab.txt": _vocab([*WORDS, "x"])}, None,
     BundleMismatchError, r"'logits' has size 7 on axis -1, but the vocabulary vocab\.txt has 8"),
    ("config.vocab_size disagrees", None, _set("config", "vocab_size", 99), BundleMismatchError,
     r"vocab\.txt: 7 tokens, the model's config\.vocab_size is 99"),
    ("preprocess.size not the graph's", None, _set("preprocess", "size", 16),
     BundleMismatchError, r"'images' has size 8 on axis 2, but the manifest's preprocess\.size"),
    ("preprocess.size huge", None, _set("preprocess", "size", 20000), BundleFormatError,
     r"'preprocess': size must be in 1\.\.4096 .*got 20000"),
    # (json.dumps writes NaN; NaN is not JSON and a manifest holding it is refused as such)
    ("preprocess.std NaN", None, _set("preprocess", "std", [float("nan")] * 3),
     BundleFormatError, "NaN is not a JSON value"),
    ("decoder.max_len 0", None, _set("decoder", "max_len", 0), BundleFormatError,
     "'decoder': max_len must be at least 1, got 0"),
    # the typed manifest already refused these; kept as guards
    ("format_version true", None, _set("format_version", True), BundleFormatError,
     "invalid format_version True"),
    ("preprocess.size true", None, _set("preprocess", "size", True), BundleFormatError,
     "'preprocess.size' must be an integer, got a boolean"),
]  # fmt: skip


def broken_bundle(chain: Path, dst: Path, files: Any, edit: Any) -> Path:
    replaced = {}
    for name, data in (files or {}).items():
        if data == "TRUNCATED":
            data = (chain / name).read_bytes()[:100]
        elif isinstance(data, str):  # another file of the bundle
            data = (chain / data).read_bytes()
        replaced[name] = data
    return tampered(chain, dst, replaced, edit)


@pytest.mark.parametrize(("files", "edit", "error", "message"), [c[1:] for c in BROKEN],
                         ids=[c[0] for c in BROKEN])  # fmt: skip
def test_a_broken_bundle_is_refused_at_load_naming_the_file(
    files, edit, error, message, chain, tmp_path, capsys
):
    bundle = broken_bundle(chain, tmp_path / "b", files, edit)
    with pytest.raises(error, match=message):
        Captioner.load(bundle)
    png(tmp_path / "x.png", 8, 8)
    line = one_error_line(capsys, ["caption", "--model", str(bundle), str(tmp_path / "x.png")])
    assert line.startswith("mmfast caption: ") and str(tmp_path / "b") in line


def test_a_graph_that_fails_to_run_is_a_bundle_graph_error(cap):
    with pytest.raises(BundleGraphError, match=r"encoder\.onnx: ONNX Runtime failed to run it"):
        cap.run("encoder.onnx", {"images": np.zeros((1, 3, 8, 8), np.int64)})


def test_encode_checks_its_pixels(cap):
    with pytest.raises(ValueError, match=r"pixels: expected shape \(B, 3, 8, 8\)"):
        cap.encode(np.zeros((1, 3, 9, 8), np.float32))
    with pytest.raises(ValueError, match="pixels: expected a float32 array"):
        cap.encode(np.zeros((1, 3, 8, 8)))


# ------------------------------------------------------------------ caption() arguments


CAPTION_ARGS = [  # keyword, value, message
    ("beam_size", True, "beam_size: expected a positive int, got True"),
    ("beam_size", MAX_BEAM_SIZE + 1, f"beam_size: at most {MAX_BEAM_SIZE}, got 101"),
    ("max_len", True, "max_len: expected a positive int, got True"),
    ("max_len", MAX_CAPTION_LEN + 1, f"max_len: at most {MAX_CAPTION_LEN}, got 513"),
    ("batch_size", True, "batch_size: expected a positive int, got True"),
    ("length_penalty", float("nan"), r"length_penalty: expected a number in \[0, 10\], got nan"),
    ("length_penalty", float("inf"), r"length_penalty: expected a number in \[0, 10\], got inf"),
    ("length_penalty", -0.5, r"length_penalty: expected a number in \[0, 10\]"),
    ("length_penalty", MAX_LENGTH_PENALTY + 1, r"length_penalty: expected a number in \[0, 10\]"),
    ("length_penalty", "0.5", "length_penalty: expected a number, got '0.5'"),
    ("beam_size", None, None),  # None: the model's default (ours: greedy, no penalty)
    ("length_penalty", None, None),
]


@pytest.mark.parametrize(("key", "value", "message"), CAPTION_ARGS)
def test_caption_refuses_a_bad_argument_naming_it(key, value, message, cap):
    if message is None:  # accepted: the same caption as the default's
        assert cap.caption([IMAGE], **{key: value}) == cap.caption([IMAGE])
        return
    with pytest.raises(ValueError, match=message):
        cap.caption([IMAGE], **{key: value})


def test_caption_takes_numpy_integers(cap):
    (c,) = cap.caption([IMAGE], beam_size=np.int64(2), max_len=np.int32(6))
    assert c.text == "red circle"


@pytest.mark.parametrize("threads", [True, 0, MAX_THREADS + 1, 2.0])
def test_load_refuses_a_bad_thread_count(threads, chain):
    with pytest.raises(ValueError, match=r"^threads: "):
        Captioner.load(chain, threads=threads)


def test_load_and_caption_refuse_what_is_not_a_path_or_images(chain, cap):
    with pytest.raises(TypeError, match="bundle: expected a directory path, got NoneType"):
        Captioner.load(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="images: expected an image or a sequence of images"):
        cap.caption(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="images: expected an image or a sequence"):
        cap.caption(iter([IMAGE]))  # type: ignore[arg-type]


IMAGE_CASES = [  # id, how to make the image (in tmp_path), error, message
    ("missing file", lambda d: d / "missing.png", FileNotFoundError,
     r"images\[1\]: no such file: .*missing\.png"),
    ("a directory", lambda d: (d / "dir.png").mkdir() or d / "dir.png", IsADirectoryError,
     r"images\[1\]: cannot open .*dir\.png: Is a directory"),
    ("garbage", lambda d: undecodable(d)["garbage"], ValueError,
     r"images\[1\]: cannot read .*garbage\.png as an image: not an image file"),
    ("truncated", lambda d: undecodable(d)["truncated"], ValueError,
     r"images\[1\]: cannot read .*truncated\.png as an image: cannot decode it"),
    ("a strip too wide", lambda d: png(d / "strip.png", 40000, 1), ValueError,
     r"images\[1\]: cannot read .*strip\.png as an image: 40000 x 1 px: each side"),
    ("an array too tall", lambda d: np.zeros((40000, 1, 3), np.uint8), ValueError,
     r"images\[1\]: 1 x 40000 px: each side must be"),
    ("a PIL image too wide", lambda d: Image.new("L", (40000, 1)), ValueError,
     r"images\[1\]: 40000 x 1 px: each side must be"),
    ("an empty array", lambda d: np.zeros((0, 0, 3), np.uint8), ValueError,
     r"images\[1\]: 0 x 0 px: each side must be"),
    ("a float array", lambda d: np.zeros((8, 8, 3)), ValueError,
     r"images\[1\]: expected a uint8 array"),
    ("a batch as one array", lambda d: np.zeros((2, 8, 8, 3), np.uint8), ValueError,
     r"images\[1\]: expected an \(H, W, 3\) RGB array, got shape \(2, 8, 8, 3\)"),
    ("None", lambda d: None, TypeError, r"images\[1\]: expected a path, a PIL image or an array"),
]  # fmt: skip


@pytest.mark.parametrize(("make", "error", "message"), [c[1:] for c in IMAGE_CASES],
                         ids=[c[0] for c in IMAGE_CASES])  # fmt: skip
def test_a_bad_image_is_named_by_its_place_in_the_call(make, error, message, cap, tmp_path):
    # the second image, in the second batch: the index is the caller's, not the batch's
    with pytest.raises(error, match=message):
        cap.caption([IMAGE, make(tmp_path)], batch_size=1)


@pytest.mark.skipif(IS_ROOT, reason="root reads any file")
def test_an_unreadable_image_is_named(cap, tmp_path):
    p = png(tmp_path / "x.png", 8, 8)
    p.chmod(0)
    try:
        with pytest.raises(PermissionError, match=r"images\[0\]: cannot open .*Permission"):
            cap.caption([p])
    finally:
        p.chmod(0o600)


# ------------------------------------------------------------------------------ the CLI


def test_cli_caption_bad_values_are_one_line(chain, tmp_path, capsys):
    x = str(png(tmp_path / "x.png", 8, 8))
    model = ["caption", "--model", str(chain), x]
    cases = {
        ("--length-penalty", "nan"): "mmfast caption: length_penalty: expected a number in",
        ("--beam", "101"): "mmfast caption: beam_size: at most 100, got 101",
        ("--max-len", "100000"): "mmfast caption: max_len: at most 512",
        ("--threads", "100000"): "mmfast caption: threads: at most 256, got 100000",
    }
    for args, message in cases.items():
        assert one_error_line(capsys, [*model, *args]).startswith(message)


@pytest.mark.parametrize("pixels", [1200, 2500])  # warned about by Pillow; refused by Pillow
def test_cli_a_decompression_bomb_is_one_line_without_a_warning(
    pixels, chain, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    bomb = str(png(tmp_path / "bomb.png", pixels // 50, 50))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        line = one_error_line(capsys, ["caption", "--model", str(chain), bomb])
    assert line.startswith("mmfast caption: images[0]: cannot read") and "limit" in line
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]


def test_cli_caption_a_directory_is_one_line(chain, tmp_path, capsys):
    x = str(png(tmp_path / "x.png", 8, 8))
    (tmp_path / "a.png").mkdir()
    line = one_error_line(capsys, ["caption", "--model", str(chain), x, str(tmp_path / "a.png")])
    assert line == f"mmfast caption: images[1]: cannot open {tmp_path / 'a.png'}: Is a directory"


def test_cli_bench_refuses_a_repeat_count_out_of_range(capsys):
    assert one_error_line(capsys, ["bench", "--repeats", "0"]) == (
        "mmfast bench: repeats: expected a positive int, got 0"
    )
    assert one_error_line(capsys, ["bench", "--repeats", "1000000"]).startswith(
        "mmfast bench: repeats: at most 10000"
    )


def saved_index(root: Path, bundle: object = "b") -> Path:
    index = EmbeddingIndex(4, {"bundle": bundle})
    index.add(np.eye(4, dtype=np.float32), ids=["a", "b", "c", "d"])
    index.save(root)
    return root


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text)


def _directory(name: str) -> Callable[[Path], None]:
    return lambda d: ((d / name).unlink(), (d / name).mkdir())


CORRUPT_INDEX = [  # id, edit of a saved index directory, message
    ("index.json a list", _write("index.json", "[]"), "(index.json is not an object)"),
    ("index.json without dim", _write("index.json", '{"format": 1}'), "int format and dim"),
    ("format a string", _write("index.json", '{"format": "1", "dim": 4}'), "int format and dim"),
    ("dim true", _write("index.json", '{"format": 1, "dim": true}'), "int format and dim"),
    ("embeddings a directory", _directory("embeddings.npy"), "Is a directory"),
    ("bundle not a path", _write("index.json", '{"format": 1, "dim": 4, "bundle": 5}'),
     "the index names no bundle; pass --model"),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), [c[1:] for c in CORRUPT_INDEX],
                         ids=[c[0] for c in CORRUPT_INDEX])  # fmt: skip
def test_cli_search_a_corrupt_index_is_one_line(edit, message, tmp_path, capsys):
    # the index is read before any bundle: no model needed
    d = saved_index(tmp_path / "ix")
    edit(d)
    line = one_error_line(capsys, ["search", "--index", str(d), "a red circle"])
    assert line.startswith("mmfast search: ") and message in line


def test_cli_search_an_index_that_is_a_file_is_one_line(tmp_path, capsys):
    f = png(tmp_path / "x.png", 2, 2)
    line = one_error_line(capsys, ["search", "--index", str(f), "a"])
    assert line == f"mmfast search: {f}: not an index directory (no such directory)"


# ---- review follow-ups: the ORT cache never comes from a bundle, graphs re-checked --------------
def test_an_optimised_graph_shipped_inside_a_bundle_is_never_used(chain, tmp_path):
    # A bundle's own .ort-cache/ was read: an entry keyed for the bundle's graph (the key is
    # computable by anyone) but holding another model replaced the verified graph.
    from mmfast.session import _cache_key, _entry_header, resolve_providers

    want = Captioner.load(chain, threads=1).caption([IMAGE])[0]
    b = tmp_path / "b"
    shutil.copytree(chain, b)
    import onnx
    from onnx import numpy_helper

    step = onnx.load(b / "decoder_step.onnx")  # another model: <bos> -> square -> <eos>
    table = numpy_helper.to_array(step.graph.initializer[0]).copy()
    table[IDS.bos] = 0.0
    table[IDS.bos, WORDS.index("square")] = 6.0
    step.graph.initializer[0].CopyFrom(numpy_helper.from_array(table, "table"))
    foreign = step.SerializeToString()
    cache = b / ".ort-cache"
    cache.mkdir()
    key = _cache_key(sha256_file(b / "decoder_step.onnx"), resolve_providers("cpu"))
    (cache / f"decoder_step.{key[:32]}.opt").write_bytes(_entry_header(key, foreign) + foreign)
    got = Captioner.load(b, threads=1).caption([IMAGE])[0]
    assert got.tokens == want.tokens and got.text == want.text


def test_the_pipelines_cache_lives_outside_the_bundle(chain, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(chain, b)
    Captioner.load(b, threads=1)
    assert not (b / ".ort-cache").exists()
    assert any(Path(os.environ["MMFAST_CACHE_DIR"]).iterdir())  # conftest's private cache


def test_a_graph_changed_after_the_bundle_check_is_refused(chain, tmp_path):
    from mmfast.bundle import BundleCorruptError, load_bundle

    b = tmp_path / "b"
    shutil.copytree(chain, b)
    bundle = load_bundle(b)  # verified ...
    (b / "encoder.onnx").write_bytes((b / "decoder_step.onnx").read_bytes())  # ... then swapped
    with pytest.raises(BundleCorruptError, match=r"encoder\.onnx: does not match the sha256"):
        Captioner(bundle, threads=1)


def test_a_symlinked_or_shared_cache_directory_is_not_used(tmp_path, caplog):
    from test_bundle_session import tiny_model

    from mmfast.session import Session

    src = tmp_path / "graph.onnx"
    tiny_model(src)
    outside = tmp_path / "outside"
    outside.mkdir()
    link = tmp_path / "cache-link"
    link.symlink_to(outside)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    x = np.ones((2, 4), np.float32)
    for cache, why in ((link, "a symlink"), (shared, "writable by others")):
        with caplog.at_level("WARNING", logger="mmfast"):
            (y,) = Session(src, optimized_dir=cache).run({"x": x})
        np.testing.assert_array_equal(y, 3 * x)
        assert f"not a private directory of this user ({why}" in caplog.text
        caplog.clear()
    assert not any(outside.iterdir()) and not any(shared.iterdir())


def test_deeply_nested_json_is_a_one_line_error(chain, tmp_path, capsys):
    b = tmp_path / "b"
    shutil.copytree(chain, b)
    (b / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    assert main(["caption", "--model", str(b), str(png(tmp_path / "x.png", 8, 8))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested too deeply" in err
    index = tmp_path / "index"
    EmbeddingIndex(4).save(index)
    (index / "ids.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        EmbeddingIndex.load(index)


def test_an_index_header_claiming_billions_of_rows_is_refused_without_allocating(tmp_path):
    index = tmp_path / "index"
    idx = EmbeddingIndex(4)
    idx.add(np.eye(4, dtype=np.float32)[:2], ["a", "b"])
    idx.save(index)
    path = index / "embeddings.npy"
    header = np.lib.format.header_data_from_array_1_0(np.zeros((2, 4), np.float32))
    header["shape"] = (2_000_000_000, 4)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.zeros(8, np.float32).tobytes())
    with pytest.raises(ValueError, match=r"corrupt index|do not match"):
        EmbeddingIndex.load(index)
