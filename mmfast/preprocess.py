"""Image preprocessing, torch-free (numpy + Pillow).

The one definition of how an image becomes the model's input tensor. The PyTorch side
(``mmfast_export.transforms``) implements the same steps with torch ops; a test proves the two
agree to float32 tolerance.

Steps, in order:
  1. decode to 8-bit RGB (grayscale, palette, RGBA/LA composited on white, as is a colour made
     transparent by a PNG transparency key; 16-bit rescaled);
  2. to float32 in [0, 255], layout (H, W, 3);
  3. resize to (size, size) with an antialiased triangle (bilinear) filter, separable, exactly
     the algorithm of Pillow's ``BILINEAR`` resampling and of torch's
     ``F.interpolate(mode="bilinear", antialias=True, align_corners=False)``, computed in float;
  4. x / 255, then (x - mean) / std per channel;
  5. layout (3, size, size) (CHW), float32.

With a ``pil_*`` resample (``PreprocessConfig.from_hf``: Hugging Face's slow, PIL-backed image
processors, ``ViTImageProcessor``, ``DeiTImageProcessor``, ``BlipImageProcessor``), steps 2-4
are those processors' instead, rounding step by step as they do (no torch twin):
  2'. resize the 8-bit RGB image with ``PIL.Image.resize`` and that filter to
      (resize, resize), or (size, size) without ``resize``; with ``resize_mode``
      "shortest_edge" (CLIP's processor) the shorter side to ``resize`` and the longer to
      int(resize * long / short), keeping the aspect ratio; with "shortest_edge_capped"
      (ViLT's processor) the shorter side to ``resize`` and the longer one capped at
      int(resize * 1333 / 800), both rounded and then cut down to a multiple of
      ``size_divisor`` (the image keeps its own (H, W): a batch is zero-padded to its largest
      image, with a pixel mask, :func:`pad_batch`); Pillow rounds the result to uint8;
  3'. with ``resize`` (but not "shortest_edge_capped"), center crop to (size, size)
      (top = (height - size) // 2, likewise left);
  4'. x = float32(float64(x) * rescale), then (x - mean) / std in float32 (mean and std rounded
      to float32 first).
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
    "PIL_FILTERS",
    "PreprocessConfig",
    "capped_size",
    "check_image_size",
    "load_rgb",
    "pad_batch",
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

# PreprocessConfig.resample's Pillow filters: the name it takes -> the filter, whose int value
# is the code a Hugging Face preprocessor_config.json stores as "resample".
PIL_FILTERS: dict[str, Image.Resampling] = {
    "pil_nearest": Image.Resampling.NEAREST,  # 0
    "pil_lanczos": Image.Resampling.LANCZOS,  # 1
    "pil_bilinear": Image.Resampling.BILINEAR,  # 2
    "pil_bicubic": Image.Resampling.BICUBIC,  # 3
    "pil_box": Image.Resampling.BOX,  # 4
    "pil_hamming": Image.Resampling.HAMMING,  # 5
}
# the float-domain resize of steps 2-5 (the module docstring), the one with a torch twin
_FLOAT_RESAMPLE = "bilinear_antialias"
_RESAMPLES = (_FLOAT_RESAMPLE, *PIL_FILTERS)
_RESIZE_MODES = ("square", "shortest_edge", "shortest_edge_capped")
# ViLT's processor (and DETR's before it) caps the longer side at 1333 / 800 of the shorter
_CAP_LONG, _CAP_SHORT = 1333, 800


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of the preprocessing; saved with every model (``to_dict``/``from_dict``).

    size: the model input's side, (3, size, size);
    mean, std: per channel (R, G, B), applied after the rescale;
    resample: "bilinear_antialias" (ours, in float) or one of ``PIL_FILTERS`` ("pil_bicubic",
        ...: Pillow's resize on the 8-bit image, as Hugging Face's PIL image processors do);
    resize: the side to resize to before a center crop to `size` (``pil_*`` only; at least
        `size`); None: resize straight to `size`;
    rescale: the factor from 0..255 pixel values, applied before mean/std (1/255; another
        value needs a ``pil_*`` resample, 1.0 is Hugging Face's do_rescale=False);
    resize_mode: "square" (`resize` is both sides), "shortest_edge" (`resize` is the shorter
        side, the aspect ratio kept; needs `resize`) or "shortest_edge_capped" (as
        "shortest_edge", the longer side capped and both sides multiples of `size_divisor`, no
        crop: each image keeps its own size, `size` is only the model's nominal side);
    size_divisor: "shortest_edge_capped"'s multiple (1 otherwise).
    """

    size: int = 64
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    resample: str = _FLOAT_RESAMPLE
    version: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    resize: int | None = None
    rescale: float = 1 / 255
    resize_mode: str = "square"
    size_divisor: int = 1

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
        if self.resample not in _RESAMPLES:
            raise ValueError(
                f"unsupported resample {self.resample!r} (one of {', '.join(_RESAMPLES)})"
            )
        # resize (crop) and another rescale exist only on the pil_* path: the float path has a
        # torch twin (mmfast_export.transforms) that resizes straight to size and divides by 255
        float_path = self.resample == _FLOAT_RESAMPLE
        if self.resize is not None:
            if float_path:
                raise ValueError(
                    f"resize (a center crop after resizing) needs a pil_* resample, "
                    f"not {self.resample!r}; got resize={self.resize}"
                )
            if not self.size <= self.resize <= MAX_SIZE:
                raise ValueError(
                    f"resize must be in size..{MAX_SIZE} (size={self.size}: the crop is inside "
                    f"the resized image), got {self.resize}"
                )
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {', '.join(_RESIZE_MODES)}, got {self.resize_mode!r}"
            )
        if self.resize_mode != "square" and self.resize is None:
            raise ValueError(f"resize_mode {self.resize_mode!r} needs resize (the shorter side)")
        if not 1 <= self.size_divisor <= MAX_SIZE:
            raise ValueError(f"size_divisor must be in 1..{MAX_SIZE}, got {self.size_divisor}")
        if self.size_divisor != 1 and self.resize_mode != "shortest_edge_capped":
            raise ValueError(
                f"size_divisor {self.size_divisor} needs resize_mode 'shortest_edge_capped'"
            )
        if self.resize_mode == "shortest_edge_capped" and self.resize is not None:
            if self.resize < self.size_divisor:  # every image would be cut to nothing
                raise ValueError(
                    f"resize {self.resize} is smaller than size_divisor {self.size_divisor}"
                )
        if not (math.isfinite(self.rescale) and self.rescale > 0):
            raise ValueError(f"rescale must be positive and finite, got {self.rescale}")
        if float_path and self.rescale != 1 / 255:
            raise ValueError(
                f"rescale must be 1/255 with resample {_FLOAT_RESAMPLE!r} (another factor needs "
                f"a pil_* resample), got {self.rescale}"
            )
        if self.version != 1:
            raise ValueError(f"preprocessing version {self.version} is not 1 (this mmfast's)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        known = {"size", "mean", "std", "resample", "version", "extra", "resize", "rescale"}
        known |= {"resize_mode", "size_divisor"}
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
        resize = d.get("resize")
        return cls(
            size=int(d.get("size", 64)),
            mean=(mean[0], mean[1], mean[2]),
            std=(std[0], std[1], std[2]),
            resample=str(d.get("resample", _FLOAT_RESAMPLE)),
            version=version,
            extra=dict(d.get("extra", {})),
            resize=None if resize is None else int(resize),
            rescale=float(d.get("rescale", 1 / 255)),
            resize_mode=str(d.get("resize_mode", "square")),
            size_divisor=int(d.get("size_divisor", 1)),
        )

    @classmethod
    def from_hf(cls, processor_config: dict[str, Any]) -> PreprocessConfig:
        """A Hugging Face ``preprocessor_config.json`` (parsed) -> the config that reproduces
        its slow (PIL) image processor: ViT, DeiT or BLIP's, or any whose keys spell out the
        same steps. ValueError naming the key for anything mmfast does not reproduce."""
        return _from_hf(processor_config)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PreprocessConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ------------------------------------------------------------ Hugging Face image processors

# What a key missing from (or null in) a preprocessor_config.json means: the processor class's
# defaults (transformers 5.x models/*/image_processing_pil_*.py and the BaseImageProcessor;
# 4.x's slow processors have the same). Keyed by the model family of the config's
# image_processor_type / feature_extractor_type.
_IMAGENET_STANDARD = [0.5, 0.5, 0.5]
_OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_HF_COMMON: dict[str, Any] = {
    "do_resize": True,
    "default_to_square": True,
    "do_center_crop": False,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "do_pad": False,
}
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "ViT": _HF_COMMON
    | {
        "size": {"height": 224, "width": 224},
        "resample": int(Image.Resampling.BILINEAR),
        "image_mean": _IMAGENET_STANDARD,
        "image_std": _IMAGENET_STANDARD,
    },
    "DeiT": _HF_COMMON
    | {
        "size": {"height": 256, "width": 256},
        "resample": int(Image.Resampling.BICUBIC),
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "image_mean": _IMAGENET_STANDARD,
        "image_std": _IMAGENET_STANDARD,
    },
    "CLIP": _HF_COMMON
    | {
        "size": {"shortest_edge": 224},
        "default_to_square": False,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "resample": int(Image.Resampling.BICUBIC),
        "image_mean": _OPENAI_CLIP_MEAN,
        "image_std": _OPENAI_CLIP_STD,
    },
    "Siglip": _HF_COMMON
    | {
        "size": {"height": 224, "width": 224},
        "resample": int(Image.Resampling.BICUBIC),
        "image_mean": _IMAGENET_STANDARD,
        "image_std": _IMAGENET_STANDARD,
    },
    "Vilt": _HF_COMMON
    | {
        "size": {"shortest_edge": 384},
        "default_to_square": False,
        "size_divisor": 32,
        "do_pad": True,
        "resample": int(Image.Resampling.BICUBIC),
        "image_mean": _IMAGENET_STANDARD,
        "image_std": _IMAGENET_STANDARD,
    },
    "Blip": _HF_COMMON
    | {
        "size": {"height": 384, "width": 384},
        "resample": int(Image.Resampling.BICUBIC),
        "image_mean": _OPENAI_CLIP_MEAN,
        "image_std": _OPENAI_CLIP_STD,
    },
}
# Keys that do not change the pixels mmfast computes: the class names; do_convert_rgb (mmfast
# always converts to RGB, as the processor does with it set); call-time options.
_HF_IGNORED = frozenset(
    {
        "image_processor_type",
        "feature_extractor_type",
        "processor_class",
        "do_convert_rgb",
        "input_data_format",
        "return_tensors",
        "device",
        "disable_grouping",
    }
)
# Keys that do: read by _from_hf (pad_size only matters with do_pad, which it refuses but
# for ViLT's rule, where the runtime pads a batch itself).
_HF_USED = frozenset(
    {*_HF_COMMON, "size", "resample", "crop_size", "image_mean", "image_std"}
    | {"pad_size", "data_format", "size_divisor"}
)
_HF_RESAMPLE = {int(f): name for name, f in PIL_FILTERS.items()}


def _hf_family(d: dict[str, Any]) -> str | None:
    """ "ViTImageProcessor", "DeiTFeatureExtractor", "BlipImageProcessorPil" ... -> "ViT",
    "DeiT", "Blip"; None for another processor (or none named)."""
    name = d.get("image_processor_type") or d.get("feature_extractor_type")
    if not isinstance(name, str):
        return None
    for suffix in ("Pil", "Fast"):
        name = name.removesuffix(suffix)
    for kind in ("ImageProcessor", "FeatureExtractor"):
        family = name.removesuffix(kind)
        if family != name and family in _HF_DEFAULTS:
            return family
    return None


def _hf_bool(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key!r} must be true or false, got {value!r}")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hf_side(key: str, value: object, default_to_square: bool = True) -> int:
    """A size or crop_size value (int, [height, width] or a size dict) -> its side; ValueError
    for anything but a square {"height", "width"}."""
    if _is_int(value):
        # transformers' get_size_dict: an int is a square, or the shortest edge
        value = {"height": value, "width": value} if default_to_square else {"shortest_edge": value}
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        value = {"height": value[0], "width": value[1]}
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} must be an int, [height, width] or an object, got {value!r}")
    if set(value) != {"height", "width"}:
        raise ValueError(
            f"{key!r} is {value!r}: only a fixed {{'height', 'width'}} size is reproduced, "
            "not aspect-preserving resizing (shortest_edge, longest_edge, max_height ...)"
        )
    h, w = value["height"], value["width"]
    if not all(_is_int(v) and v > 0 for v in (h, w)):
        raise ValueError(f"{key!r} needs positive integer height and width, got {value!r}")
    if h != w:
        raise ValueError(f"{key!r} is {h} x {w} (height x width): mmfast's input is square")
    side: int = h
    return side


def _shortest_edge(value: object, default_to_square: bool) -> int | None:
    """The side of a {"shortest_edge": n} size (or an int one with default_to_square false),
    None for any other size (which _hf_side reads)."""
    if _is_int(value) and not default_to_square:
        value = {"shortest_edge": value}
    if not (isinstance(value, dict) and "shortest_edge" in value):
        return None
    n = value["shortest_edge"]
    if set(value) != {"shortest_edge"}:  # longest_edge caps the longer side: not reproduced
        raise ValueError(f"'size' is {value!r}: only shortest_edge alone is reproduced")
    if not (_is_int(n) and n > 0):
        raise ValueError(f"'size' shortest_edge must be a positive integer, got {n!r}")
    side: int = n
    return side


def _hf_channels(key: str, value: object, positive: bool = False) -> tuple[float, float, float]:
    if _is_number(value):
        value = [value] * 3  # transformers' normalize: one value for every channel
    if not (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(_is_number(x) and math.isfinite(x) and (x > 0 or not positive) for x in value)
    ):
        what = "positive" if positive else "finite"
        raise ValueError(f"{key!r} must be a {what} number or 3 of them (R, G, B), got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _from_hf(d: dict[str, Any]) -> PreprocessConfig:
    """PreprocessConfig.from_hf."""
    if not isinstance(d, dict):
        raise ValueError(f"a preprocessor config is a JSON object, got {type(d).__name__}")
    for key in d:
        if key not in _HF_USED and key not in _HF_IGNORED:
            raise ValueError(f"preprocessor config key {key!r} is not one mmfast reproduces")
    family = _hf_family(d)
    defaults = _HF_DEFAULTS[family] if family is not None else {}

    def get(key: str) -> Any:
        # transformers' _set_attributes: a missing or null key takes the class default
        value = d.get(key)
        if value is None:
            value = defaults.get(key)
        if value is None:
            named = d.get("image_processor_type") or d.get("feature_extractor_type")
            raise ValueError(
                f"preprocessor config key {key!r} is missing, and {named!r} is not a processor "
                f"whose defaults mmfast knows ({', '.join(_HF_DEFAULTS)})"
            )
        return value

    if d.get("data_format") not in (None, "channels_first"):
        raise ValueError(f"'data_format' {d['data_format']!r}: mmfast's input is channels_first")
    # ViLT's rule: shorter side, longer capped, multiples of size_divisor, padded with a mask
    capped = family == "Vilt" or "size_divisor" in d
    if _hf_bool("do_pad", get("do_pad")) and not capped:
        raise ValueError("'do_pad' true: padding to a common size is not reproduced")
    if not _hf_bool("do_resize", get("do_resize")):
        raise ValueError("'do_resize' false: each image would keep its own size; mmfast's is fixed")
    size = get("size")
    # default_to_square only says what an int size means. CLIP's shortest_edge: the shorter
    # side, the aspect ratio kept
    square = _is_int(size) and _hf_bool("default_to_square", get("default_to_square"))
    shortest = _shortest_edge(size, square or not _is_int(size))
    crop_it = _hf_bool("do_center_crop", get("do_center_crop"))
    mode = "square"
    divisor = 1
    if capped:
        if shortest is None or crop_it:
            raise ValueError(
                f"'size_divisor' with size {size!r} and do_center_crop {crop_it}: only ViLT's "
                "rule (shortest_edge, no crop) is reproduced"
            )
        divisor = get("size_divisor")
        if not (_is_int(divisor) and divisor > 0):
            raise ValueError(f"'size_divisor' must be a positive integer, got {divisor!r}")
        side, mode = shortest, "shortest_edge_capped"
    elif shortest is not None:
        if not crop_it:
            raise ValueError(
                f"'size' is {size!r} without a center crop: each image would keep its own "
                "aspect ratio; mmfast's input is square"
            )
        side, mode = shortest, "shortest_edge"
    else:
        side = _hf_side("size", size, square)
    resize: int | None = side if capped else None
    if crop_it:
        crop = _hf_side("crop_size", get("crop_size"))  # an int crop_size is always a square
        if crop > side:
            raise ValueError(
                f"'crop_size' {crop} is larger than 'size' {side}: the zero padding that "
                "transformers adds is not reproduced"
            )
        side, resize = crop, side
    code = get("resample")
    if not _is_int(code) or code not in _HF_RESAMPLE:
        raise ValueError(
            f"'resample' must be a PIL filter code ({', '.join(map(str, _HF_RESAMPLE))}), "
            f"got {code!r}"
        )
    rescale = 1.0  # do_rescale false: the uint8 values as they are
    if _hf_bool("do_rescale", get("do_rescale")):
        factor = get("rescale_factor")
        if not (_is_number(factor) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"'rescale_factor' must be a positive number, got {factor!r}")
        rescale = float(factor)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # do_normalize false: (x - 0) / 1 is x
    if _hf_bool("do_normalize", get("do_normalize")):
        mean = _hf_channels("image_mean", get("image_mean"))
        std = _hf_channels("image_std", get("image_std"), positive=True)
    try:
        return PreprocessConfig(
            size=side,
            mean=mean,
            std=std,
            resample=_HF_RESAMPLE[code],
            resize=resize,
            rescale=rescale,
            resize_mode=mode,
            size_divisor=divisor,
        )
    except ValueError as e:
        raise ValueError(f"preprocessor config: {e}") from None


# ------------------------------------------------------------------------------- decoding


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB. Alpha (or a transparency key) is composited on white;
    16/32-bit is rescaled. For 8-bit modes (but the premultiplied RGBa, La) this is what
    transformers' ``convert_to_rgb`` does to a Pillow image."""
    mode = img.mode
    if mode in ("L", "RGB") and img.info.get("transparency") is not None:
        mode = "RGBA"  # a colour made transparent (PNG tRNS): composited below, as for P
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
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # convert("RGBA") applies a transparency key
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
    return _checked_rgb_array(image)


def _as_rgb_image(image: Image.Image | npt.NDArray[Any]) -> Image.Image:
    """Pillow image or (H, W, 3) uint8 array -> RGB Pillow image; sides checked first."""
    if isinstance(image, Image.Image):
        check_image_size(*image.size)
        return to_rgb(image)
    return Image.fromarray(_checked_rgb_array(image), mode="RGB")


def _checked_rgb_array(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {arr.dtype}")
    check_image_size(arr.shape[1], arr.shape[0])
    return arr


def capped_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(height, width) of an image after "shortest_edge_capped" resizing, as ViLT's processor
    computes it (get_resize_output_image_size: float scales, rounded half up, then cut down to
    a multiple of size_divisor). An image so elongated that a side would be cut to nothing
    (a banner: transformers fails on it) keeps that side at one size_divisor."""
    assert cfg.resize is not None  # the mode needs it (PreprocessConfig checks)
    short, long_cap = cfg.resize, int(_CAP_LONG / _CAP_SHORT * cfg.resize)
    scale = short / min(height, width)
    if height < width:
        new_h, new_w = float(short), scale * width
    else:
        new_h, new_w = scale * height, float(short)
    if max(new_h, new_w) > long_cap:
        scale = long_cap / max(new_h, new_w)
        new_h, new_w = scale * new_h, scale * new_w
    d = cfg.size_divisor
    return max(d, int(new_h + 0.5) // d * d), max(d, int(new_w + 0.5) // d * d)


def pad_batch(images: list[FloatArray]) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    """(3, H_i, W_i) images -> pixels (B, 3, H, W) zero-padded at the bottom and right to the
    largest H and W, and the pixel mask (B, H, W) int64, 1 on each image's own pixels (ViLT's
    processor's do_pad)."""
    if not images:
        raise ValueError("no images")
    h = max(x.shape[1] for x in images)
    w = max(x.shape[2] for x in images)
    pixels = np.zeros((len(images), 3, h, w), np.float32)
    mask = np.zeros((len(images), h, w), np.int64)
    for i, x in enumerate(images):
        pixels[i, :, : x.shape[1], : x.shape[2]] = x
        mask[i, : x.shape[1], : x.shape[2]] = 1
    return pixels, mask


def preprocess(image: Image.Image | npt.NDArray[Any], cfg: PreprocessConfig) -> FloatArray:
    """One image -> (3, size, size) float32, normalised; (3, H, W), the image's own size, with
    resize_mode "shortest_edge_capped" (:func:`capped_size`)."""
    if cfg.resample != _FLOAT_RESAMPLE:
        return _preprocess_pil(image, cfg)
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


def _preprocess_pil(image: Image.Image | npt.NDArray[Any], cfg: PreprocessConfig) -> FloatArray:
    """Steps 2'-4' of the module docstring, in transformers' order and dtypes (PilBackend's
    resize, center_crop, rescale, normalize in image_transforms.py)."""
    side = cfg.size if cfg.resize is None else cfg.resize
    img = _as_rgb_image(image)
    w, h = side, side
    crop = True
    if cfg.resize_mode == "shortest_edge":
        # get_resize_output_image_size(default_to_square=False): the shorter side to `side`,
        # the longer to int(side * long / short), truncated
        if img.width <= img.height:
            h = int(side * img.height / img.width)
        else:
            w = int(side * img.width / img.height)
    elif cfg.resize_mode == "shortest_edge_capped":
        h, w = capped_size(img.width, img.height, cfg)
        crop = False
    # transformers' resize: PIL.Image.resize on the 8-bit image, so the result is uint8
    # (Pillow rounds and clips each resampled value); reducing_gap None
    resized = img.resize((w, h), resample=PIL_FILTERS[cfg.resample])
    u8 = np.asarray(resized, dtype=np.uint8)  # (H', W', 3)
    # center_crop: (orig - crop) // 2 from the top and from the left
    if crop:
        top, left = (h - cfg.size) // 2, (w - cfg.size) // 2
        u8 = u8[top : top + cfg.size, left : left + cfg.size]  # (S, S, 3)
    # rescale: float64 product, rounded once to float32
    x = (u8.transpose(2, 0, 1).astype(np.float64) * cfg.rescale).astype(np.float32)  # (3, S, S)
    # normalize: in the image's dtype, float32, with mean and std rounded to float32 first
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None]
    out: FloatArray = np.ascontiguousarray((x - mean) / std, np.float32)
    return out


def preprocess_batch(
    images: list[Image.Image] | list[npt.NDArray[Any]], cfg: PreprocessConfig
) -> FloatArray:
    """A list of images -> (B, 3, size, size) float32 (not for "shortest_edge_capped", whose
    images differ in size: :func:`pad_batch`)."""
    if len(images) == 0:
        raise ValueError("no images")
    if cfg.resize_mode == "shortest_edge_capped":
        raise ValueError("images of resize_mode 'shortest_edge_capped' are batched by pad_batch")
    return np.stack([preprocess(im, cfg) for im in images]).astype(np.float32, copy=False)
