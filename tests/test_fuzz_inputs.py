"""Fuzzing with hypothesis, the inputs that come from files and callers: bundle manifests (the
exporter's real ones, mutated; and arbitrary bytes as manifest.json), images for the
preprocessing (arrays of any dtype and shape, Pillow images of every mode, arbitrary bytes as an
image file) and saved index directories (mutated). Every input is either accepted — and then
the preprocessing's result is checked against a float64 reference within its rounding bound, an
index answers with finite scores — or refused with the documented error types: BundleError for
a bundle; ValueError / TypeError / OSError for an image or an index. Any other exception, a
crash or a hang (the watchdog of test_fuzz.py) fails.

CI runs a few hundred inputs per target; the long run: see tests/test_fuzz.py (same variable).
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from test_fuzz import FUZZ, watchdog

from mmfast.bundle import BundleError, Manifest, load_bundle
from mmfast.index import EmbeddingIndex
from mmfast.preprocess import PreprocessConfig, preprocess, resize_matrix, to_rgb

EPS = float(np.finfo(np.float32).eps)
V1: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "manifests_v1.json").read_text()
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)


# ---- manifests -----------------------------------------------------------------------------------
def _paths(x: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a JSON tree."""
    out = [prefix] if prefix else []
    if isinstance(x, dict):
        for k, v in x.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out += _paths(v, (*prefix, i))
    return out


@FUZZ
@given(
    kind=st.sampled_from(sorted(V1)),
    edits=st.lists(
        st.tuples(st.integers(0, 10**6), st.sampled_from(["set", "delete", "add"]), JSON),
        min_size=1,
        max_size=3,
    ),
)
def test_fuzz_manifest(kind: str, edits: list[tuple[int, str, Any]]) -> None:
    m = copy.deepcopy(V1[kind])
    for pick, how, value in edits:
        paths = _paths(m)
        *parents, last = paths[pick % len(paths)]
        d: Any = m
        for key in parents:
            d = d[key]
        if how == "delete":
            del d[last]
        elif how == "add" and isinstance(d, dict):
            d[f"x{pick % 7}"] = value
        else:
            d[last] = value
    with watchdog():
        try:
            Manifest.from_dict(m)
        except BundleError as e:
            assert "manifest.json: " in str(e)


@FUZZ
@given(data=st.binary(max_size=300) | JSON.map(lambda j: json.dumps(j).encode()))
def test_fuzz_manifest_file(data: bytes, tmp_path_factory: Any) -> None:
    root = tmp_path_factory.mktemp("bundle")
    (root / "manifest.json").write_bytes(data)
    with watchdog():
        try:
            load_bundle(root)
        except BundleError:
            pass


# ---- preprocessing -------------------------------------------------------------------------------
def _reference(rgb: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """float64 preprocessing of an (H, W, 3) uint8 image with the same filter weights, and the
    float32 rounding bound: two resize passes of at most k terms each (k*eps relative of the sum
    of |terms|, Higham), the weights' own rounding, then the division and the normalisation."""
    ry = resize_matrix(rgb.shape[0], cfg.size).astype(np.float64)  # (S, H)
    rx = resize_matrix(rgb.shape[1], cfg.size).astype(np.float64)  # (S, W)
    x = np.einsum("sh,hwc,tw->cst", ry, rgb.astype(np.float64), rx) / 255.0
    mean = np.asarray(cfg.mean)[:, None, None]
    std = np.asarray(cfg.std)[:, None, None]
    k = (ry != 0).sum(1).max() + (rx != 0).sum(1).max()
    mag = np.einsum("sh,hwc,tw->cst", np.abs(ry), rgb.astype(np.float64), np.abs(rx)) / 255.0
    bound = ((k + 6) * EPS * mag + EPS * np.abs(mean)) / std + 2 * EPS * np.abs((x - mean) / std)
    return (x - mean) / std, bound


MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "F", "CMYK", "YCbCr", "HSV"]


@FUZZ
@given(
    h=st.integers(0, 40),
    w=st.integers(0, 40),
    size=st.integers(1, 48),
    form=st.sampled_from(["array", "pil", "file", "garbage", "odd_array"]),
    mode=st.sampled_from(MODES),
    dtype=st.sampled_from(["uint8", "uint16", "float32", "bool", "int64"]),
    channels=st.sampled_from([3, 3, 1, 4, 0]),
    garbage=st.binary(max_size=200),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_preprocess(
    h: int, w: int, size: int, form: str, mode: str, dtype: str, channels: int, garbage: bytes,
    seed: int, tmp_path_factory: Any,
) -> None:  # fmt: skip
    from mmfast._pipeline import load_image

    rng = np.random.default_rng(seed)
    cfg = PreprocessConfig(size=size)
    u8 = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image: Any
    if form == "array":
        image = u8
    elif form == "odd_array":  # any dtype, any channel count: refused unless (H, W, 3) uint8
        shape = (h, w) if channels == 0 else (h, w, channels)
        image = (rng.random(shape) * 300).astype(dtype)
    else:
        pil = Image.fromarray(u8, "RGB") if h and w else Image.new("RGB", (w, h))
        try:
            pil = pil.convert(mode)
        except ValueError:  # a mode Pillow cannot convert RGB into
            pil = pil.convert("L")
        image = pil
        if form in ("file", "garbage"):
            path = tmp_path_factory.mktemp("img") / "image.png"
            if form == "garbage":
                path.write_bytes(garbage)
            else:
                buf = io.BytesIO()
                try:
                    pil.save(buf, format="PNG" if pil.mode != "CMYK" else "TIFF")
                except (OSError, ValueError):
                    return  # Pillow cannot write this mode: not our input to fuzz
                path.write_bytes(buf.getvalue())
            image = str(path)
    with watchdog():
        try:
            loaded = load_image(image, 0)
            got = preprocess(loaded, cfg)
        except (ValueError, TypeError, OSError) as e:
            assert str(e), "an error without a message"
            return
    assert got.shape == (3, size, size) and got.dtype == np.float32
    assert np.isfinite(got).all()
    rgb = np.asarray(to_rgb(loaded)) if isinstance(loaded, Image.Image) else loaded
    ref, bound = _reference(rgb, cfg)
    assert (np.abs(got - ref) <= bound).all(), "preprocess outside its float64 bound"


# ---- saved index directories ---------------------------------------------------------------------
@FUZZ
@given(
    n=st.integers(0, 6),
    dim=st.integers(1, 8),
    target=st.sampled_from(["index.json", "ids.json", "embeddings.npy", "none"]),
    how=st.sampled_from(["json", "bytes", "array", "truncate", "delete"]),
    payload=JSON,
    raw=st.binary(max_size=200),
    arr=st.sampled_from(["nan", "scaled", "float64", "shape", "duplicate"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_fuzz_index_files(
    n: int, dim: int, target: str, how: str, payload: Any, raw: bytes, arr: str, seed: int,
    tmp_path_factory: Any,
) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    root = tmp_path_factory.mktemp("index")
    index = EmbeddingIndex(dim, {"bundle": "b"})
    if n:
        index.add(rng.standard_normal((n, dim)).astype(np.float32), [f"img{i}" for i in range(n)])
    index.save(root)
    path = root / target
    if target != "none":
        if how == "delete":
            path.unlink()
        elif how == "truncate":
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        elif how == "bytes":
            path.write_bytes(raw)
        elif how == "json":
            path.write_text(json.dumps(payload))
        elif target == "embeddings.npy":
            e = np.load(path)
            e = {
                "nan": np.where(rng.random(e.shape) < 0.2, np.nan, e).astype(np.float32),
                "scaled": e * 3,
                "float64": e.astype(np.float64),
                "shape": np.zeros((n + 1, dim), np.float32),
                "duplicate": np.concatenate([e, e[:1]]) if n else e,
            }[arr]
            np.save(path, e)
    with watchdog():
        try:
            loaded = EmbeddingIndex.load(root)
        except (ValueError, OSError) as e:
            assert str(e)
            return
        if len(loaded):
            query = rng.standard_normal((1, dim)).astype(np.float32)
            (ids,), scores = loaded.search(query, k=3)  # (1 query, k)
            assert len(ids) == scores.shape[1] == min(3, len(loaded))
            assert np.isfinite(scores).all() and (np.abs(scores) <= 1 + 1e-5).all()
