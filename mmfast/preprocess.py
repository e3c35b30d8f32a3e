"""Image preprocessing, torch-free (numpy + Pillow).

The one definition of how an image becomes the model's input tensor. The PyTorch side
(``mmfast_export.transforms``) implements the same steps with torch ops; a test proves the two
agree to float32 tolerance.

Steps, in order:
  1. decode to 8-bit RGB (grayscale, palette, RGBA/LA composited on white, 16-bit rescaled);
  2. to float32 in [0, 255], layout (H, W, 3);
  3. resize to (size, size) with an antialiased triangle (bilinear) filter, separable, exactly
     the algorithm of Pillow's ``BILINEAR`` resampling and of torch's
     ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``, computed in float;
  4. x / 255, then (x - mean) / std per channel;
  5. layout (3, size, size) (CHW), float32.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

__all__ = [
    "MAX_IMAGE_SIDE",
    "MAX_SIZE",
    "PreprocessConfig",
    "check_image_size",
    "load_rgb",
    "preprocess",
    "preprocess_batch",
    "resize_matrix",
    "to_rgb",
]

FloatArray = npt.NDArray[np.float32]

# The model input side (PreprocessConfig.size) at most: a (3, 4096, 4096) float32 input is
# 200 MB an image, already far beyond what these models take; a manifest asking for more is
# refused before anything is allocated.
MAX_SIZE = 4096
# An image's side (width or height) at most. Resizing costs memory in proportion to side x size
# (the separable filter's weights, the half-resized rows), so a 1-pixel-high image 80 million
# pixels wide, within the pixel limit, would need tens of GB. Files are also held to Pillow's
# pixel limit, PIL.Image.MAX_IMAGE_PIXELS (89.5 MP by default; raise it to read larger ones).
MAX_IMAGE_SIDE = 32768
# Resize weights are cached for sizes that recur (an image folder of one camera); a matrix
# larger than this many weights is computed each time, so the cache stays under 256 MB.
_CACHE_MAX_WEIGHTS = 1 << 20


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the preprocessing; saved with every model (``to_dict``/``from_dict``)."""

    size: int = 64
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    resample: str = "bilinear_antialias"
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.size <= MAX_SIZE:
            raise ValueError(
                f"size must be in 1..{MAX_SIZE} (mmfast.preprocess.MAX_SIZE), got {self.size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (R, G, B)")
        if not all(math.isfinite(x) for x in (*self.mean, *self.std)):
            raise ValueError(f"mean and std must be finite, got {self.mean}, {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.resample != "bilinear_antialias":
            raise ValueError(f"unsupported resample {self.resample!r}")
        if self.version != 1:
            raise ValueError(f"preprocessing version {self.version} is not 1 (this mmfast's)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        known = {"size", "mean", "std", "resample", "version", "extra"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        version = int(d.get("version", 1))
        if version > 1:
            raise ValueError(f"preprocessing version {version} is newer than this mmfast (1)")
        mean = tuple(float(x) for x in d.get("mean", (0.5, 0.5, 0.5)))
        std = tuple(float(x) for x in d.get("std", (0.25, 0.25, 0.25)))
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need 3 values (R, G, B)")
        return cls(
            size=int(d.get("size", 64)),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            resample=str(d.get("resample", "bilinear_antialias")),
            version=version,
            extra=dict(d.get("extra", {})),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PreprocessConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB. Alpha is composited on white; 16/32-bit is rescaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        a8 = np.clip(np.rint(a / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        scale = (hi - lo) if hi > lo else 1.0
        a8 = np.clip(np.rint((a - lo) / scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def check_image_size(width: int, height: int) -> None:
    """ValueError if a width x height image is more than mmfast preprocesses: a side over
    :data:`MAX_IMAGE_SIDE`, or none at all."""
    if not (1 <= width <= MAX_IMAGE_SIDE and 1 <= height <= MAX_IMAGE_SIDE):
        raise ValueError(
            f"{width} x {height} px: each side must be 1..{MAX_IMAGE_SIDE} px "
            "(mmfast.preprocess.MAX_IMAGE_SIDE)"
        )


# What Pillow raises for a file it cannot decode: UnidentifiedImageError and "broken data
# stream"/"truncated" are OSErrors; some plugins raise ValueError, EOFError, SyntaxError or
# struct.error from a malformed header.
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error)


@contextmanager
def _decoding() -> Iterator[None]:
    """Pillow's errors for a file it cannot decode -> ValueError."""
    try:
        yield
    except Image.DecompressionBombError as e:  # over twice the pixel limit: Pillow's refusal
        raise ValueError(str(e)) from None
    except UnidentifiedImageError:
        raise ValueError("not an image file Pillow can read") from None
    except _DECODE_ERRORS as e:
        raise ValueError(f"cannot decode it ({e})") from e


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file and convert it to 8-bit RGB (the file is closed afterwards).

    OSError (FileNotFoundError, IsADirectoryError, PermissionError, ...) if the file cannot be
    opened; ValueError if it is not an image Pillow can decode, or is larger than Pillow's
    pixel limit ``PIL.Image.MAX_IMAGE_PIXELS`` (refused from its header, before decoding;
    Pillow itself only warns up to twice the limit) or has a side over :data:`MAX_IMAGE_SIDE`.
    """
    with open(path, "rb") as f:
        with _decoding():
            im = Image.open(f)
        with im:
            width, height = im.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and width * height > limit:
                raise ValueError(
                    f"{width} x {height} = {width * height} px is over Pillow's limit of "
                    f"{limit} px (PIL.Image.MAX_IMAGE_PIXELS; a decompression bomb?)"
                )
            check_image_size(width, height)
            with _decoding():
                im.load()
            return to_rgb(im)


@lru_cache(maxsize=64)
def _resize_matrix_cached(in_size: int, out_size: int) -> FloatArray:
    m = resize_matrix(in_size, out_size)
    m.flags.writeable = False  # shared between calls
    return m


def _resize_weights(in_size: int, out_size: int) -> FloatArray:
    if in_size * out_size > _CACHE_MAX_WEIGHTS:
        return resize_matrix(in_size, out_size)
    return _resize_matrix_cached(in_size, out_size)


def resize_matrix(in_size: int, out_size: int) -> FloatArray:
    """(out_size, in_size) weights of the antialiased triangle filter along one axis.

    Pillow's ``ImagingResample`` / torch's ``_compute_indices_weights_aa``:
    scale = in/out; support = scale (downsampling) or 1 (upsampling);
    center_i = scale * (i + 0.5); w_ij = tri((j - center_i + 0.5) / max(scale, 1)), normalised.
    """
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    # weights computed in float64 and rounded once to float32, row by row (no float64 copy
    # of the whole matrix)
    m = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        center = scale * (i + 0.5)
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        j = np.arange(xmin, xmax, dtype=np.float64)
        w = np.clip(1.0 - np.abs((j - center + 0.5) * invscale), 0.0, None)
        total = w.sum()
        if total > 0:
            m[i, xmin:xmax] = w / total
    return m


def _as_rgb_uint8(image: Image.Image | npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Pillow image or (H, W, 3) uint8 array -> (H, W, 3) uint8 RGB; sides checked first."""
    if isinstance(image, Image.Image):
        check_image_size(*image.size)
        return np.asarray(to_rgb(image), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {arr.dtype}")
    check_image_size(arr.shape[1], arr.shape[0])
    return arr


def preprocess(image: Image.Image | npt.NDArray[Any], cfg: PreprocessConfig) -> FloatArray:
    """One image -> (3, size, size) float32, normalised."""
    u8 = _as_rgb_uint8(image)  # (H, W, 3)
    h, w, _ = u8.shape
    ry = _resize_weights(h, cfg.size)  # (S, H)
    rx = _resize_weights(w, cfg.size)  # (S, W)
    # separable: rows first (W axis), then columns (H axis), like Pillow/torch. As BLAS
    # matmuls over blocks of rows, so a 10000 x 10000 photo costs ~0.2 s and ~150 MB, not
    # the ~40 s and 1.2 GB of a float copy of the whole image through einsum.
    rows = np.empty((h, 3, cfg.size), np.float32)  # (H, 3, S)
    block = max(1, (1 << 25) // max(1, w * 3 * 4))  # ~32 MB of float32 input per block
    rxt = np.ascontiguousarray(rx.T)  # (W, S)
    for r0 in range(0, h, block):
        part = u8[r0 : r0 + block]
        b = part.shape[0]
        # (b, W, 3) -> contiguous (b*3, W) so the contraction over W is one sgemm
        chunk = np.ascontiguousarray(part.transpose(0, 2, 1), dtype=np.float32).reshape(b * 3, w)
        rows[r0 : r0 + b] = (chunk @ rxt).reshape(b, 3, cfg.size)
    s = cfg.size
    x = (ry @ rows.reshape(h, 3 * s)).reshape(s, 3, s).transpose(1, 0, 2)  # (3, S, S)
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None]
    out: FloatArray = np.ascontiguousarray((x / np.float32(255.0) - mean) / std, np.float32)
    return out


def preprocess_batch(
    images: list[Image.Image] | list[npt.NDArray[Any]], cfg: PreprocessConfig
) -> FloatArray:
    """A list of images -> (B, 3, size, size) float32."""
    if len(images) == 0:
        raise ValueError("no images")
    return np.stack([preprocess(im, cfg) for im in images]).astype(np.float32, copy=False)
