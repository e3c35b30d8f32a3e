"""What one request may ask of the server, checked at the edge before anything is queued.

A request is refused with a 4xx naming the limit (:class:`~mmfast.serving.errors.ApiError`)
when it is over one: its body's bytes (enforced while the body streams in, see
``app._BodyLimit``), an image's pixels (read from the file's header before the pixel data is
decoded, so a decompression bomb costs a few hundred bytes of parsing, not gigabytes), a
text's length, k, the images or questions in one request. Images are decoded here, in the
request's own thread, so the batcher only ever sees valid (H, W, 3) uint8 arrays and a corrupt
upload cannot fail a batch of other people's requests.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..preprocess import check_image_size, to_rgb
from .errors import ApiError

__all__ = [
    "Limits",
    "check_k",
    "check_text",
    "decode_base64",
    "decode_image",
    "read_server_image",
]

# What Pillow raises for data it cannot decode (see mmfast.preprocess._DECODE_ERRORS).
_DECODE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, struct.error)


@dataclass(frozen=True)
class Limits:
    """Per-request limits (the CLI's --max-* flags). Defaults fit a photo from a phone."""

    max_body_bytes: int = 16 * 1024 * 1024  # a request body (uploads, base64 JSON)
    max_image_pixels: int = 40_000_000  # decoded width x height (an 8000 x 5000 photo)
    max_text_chars: int = 1000  # a question or a search query
    max_k: int = 100  # search results
    max_images: int = 64  # images in one index/add request
    max_questions: int = 16  # questions about one image
    max_beam_size: int = 8
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"limits.{name}: expected a positive int, got {value!r}")


def decode_image(data: bytes, limits: Limits, field: str = "image") -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) uint8, or a 400/413 ApiError naming `field`.

    The size is read from the header (Pillow's lazy ``Image.open``) and checked against
    ``limits.max_image_pixels`` and MAX_IMAGE_SIDE before ``load()`` decodes any pixel data.
    """
    if not data:
        raise ApiError(400, "invalid_image", f"{field}: empty upload")
    try:
        with warnings.catch_warnings():
            # Pillow warns (DecompressionBombWarning) past its own limit; ours is checked below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # over twice Pillow's limit: refused at open
        raise ApiError(413, "image_too_large", f"{field}: {e}") from None
    except UnidentifiedImageError:
        raise ApiError(400, "invalid_image", f"{field}: not an image Pillow can read") from None
    except _DECODE_ERRORS as e:
        raise ApiError(400, "invalid_image", f"{field}: cannot decode it ({e})") from None
    with im:
        width, height = im.size
        if width * height > limits.max_image_pixels:
            raise ApiError(
                413,
                "image_too_large",
                f"{field}: {width} x {height} = {width * height} px is over the server's limit "
                f"of {limits.max_image_pixels} px",
            )
        try:
            check_image_size(width, height)
        except ValueError as e:
            raise ApiError(413, "image_too_large", f"{field}: {e}") from None
        try:
            im.load()
            rgb = to_rgb(im)
        except _DECODE_ERRORS as e:
            raise ApiError(400, "invalid_image", f"{field}: cannot decode it ({e})") from None
        return np.asarray(rgb, dtype=np.uint8)


def decode_base64(text: object, field: str) -> bytes:
    """A JSON field's base64 string (a ``data:...;base64,`` prefix allowed) -> bytes."""
    if not isinstance(text, str):
        raise ApiError(400, "bad_request", f"{field}: expected a base64 string")
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_image", f"{field}: not valid base64") from None


def read_server_image(
    path: object, allow_dir: Path | None, limits: Limits, field: str = "path"
) -> np.ndarray:
    """An image file on the server, only inside `allow_dir` (the CLI's --allow-dir).

    The path is resolved (symlinks and ``..`` followed) before it is compared with the
    directory, so neither can lead out of it. Without `allow_dir`, any path is a 403.
    """
    if allow_dir is None:
        raise ApiError(
            403, "forbidden", f"{field}: reading server-side files is off (start with --allow-dir)"
        )
    if not isinstance(path, str) or not path:
        raise ApiError(400, "bad_request", f"{field}: expected a file path")
    root = allow_dir.resolve()
    try:
        p = (root / path).resolve(strict=True)
    except (OSError, RuntimeError):
        raise ApiError(404, "not_found", f"{field}: no such file: {path}") from None
    if not p.is_relative_to(root):
        raise ApiError(403, "forbidden", f"{field}: {path} is outside the allowed directory")
    try:
        size = os.stat(p).st_size
        if size > limits.max_body_bytes:
            raise ApiError(
                413, "payload_too_large", f"{field}: {size} bytes, over {limits.max_body_bytes}"
            )
        data = p.read_bytes()
    except IsADirectoryError:
        raise ApiError(400, "bad_request", f"{field}: {path} is a directory") from None
    except OSError as e:
        raise ApiError(403, "forbidden", f"{field}: cannot read {path} ({e.strerror})") from None
    return decode_image(data, limits, field)


def check_text(text: object, field: str, limits: Limits) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "bad_request", f"{field}: expected a non-empty string")
    if len(text) > limits.max_text_chars:
        raise ApiError(
            400,
            "text_too_long",
            f"{field}: {len(text)} characters, over the limit of {limits.max_text_chars}",
        )
    return text


def check_k(k: int, limits: Limits) -> int:
    if not 1 <= k <= limits.max_k:
        raise ApiError(400, "bad_request", f"k: expected 1..{limits.max_k}, got {k}")
    return k
