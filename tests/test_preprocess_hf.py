"""mmfast.preprocess's Hugging Face path: PreprocessConfig.from_hf maps a
``preprocessor_config.json`` to a config whose ``pil_*`` preprocessing reproduces transformers'
slow (PIL) image processors (ViT, DeiT, BLIP), on real photos (skimage.data); the new fields
round-trip through to_dict/from_dict and a manifest, and manifests without them still load.

Tolerance of the parity tests. Both sides resize the same 8-bit RGB pixels with the same
Pillow call, so the resized uint8 images are identical; what follows is three float32 roundings
of the same formula, out = (float32(x * rescale) - mean) / std:
  - the cast of x * rescale (in [0, X], X = 255 * rescale) to float32: at most eps/2 * X;
  - the subtraction: at most eps/2 * |x - mean|, and with the cast's error, divided by std;
  - the division: at most eps/2 * |out|.
So one implementation of it is within eps/2 * (X + |x - mean|) / std + eps/2 * |out|
<= eps/2 * X / std + eps * |out| of the exact value (|x - mean| / std = |out|), and two are within
twice that of each other (eps = float32's machine epsilon). That is the bound asserted, computed
from the config; transformers does exactly these operations in this order, and we measure 0.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from mmfast.bundle import BundleFormatError, Manifest
from mmfast.preprocess import PIL_FILTERS, PreprocessConfig, preprocess, preprocess_batch, to_rgb

EPS32 = float(np.finfo(np.float32).eps)
IMAGENET_DEFAULT_MEAN = [0.485, 0.456, 0.406]
IMAGENET_DEFAULT_STD = [0.229, 0.224, 0.225]
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# preprocessor_config.json contents, as the Hub's captioners have them (the first three) and
# with the awkward choices a test wants (non-default filters, odd sizes and crops, no rescale)
HF_CONFIGS: dict[str, dict[str, Any]] = {
    # a ViT-GPT2 captioner's: the old feature-extractor keys, size as an int
    "vit": {
        "feature_extractor_type": "ViTFeatureExtractor",
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "size": 224,
    },
    # a DeiT encoder's: resize to 256, center crop 224
    "deit": {
        "feature_extractor_type": "DeiTFeatureExtractor",
        "crop_size": 224,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
        "resample": 3,
        "size": 256,
    },
    # a BLIP captioner's
    "blip": {
        "image_processor_type": "BlipImageProcessor",
        "processor_class": "BlipProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 384, "width": 384},
    },
    # a CLIP retriever's (openai/clip-vit-base-patch32): the shorter side to 224, aspect kept,
    # then a center crop
    "clip": {
        "image_processor_type": "CLIPImageProcessor",
        "crop_size": {"height": 224, "width": 224},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": OPENAI_CLIP_MEAN,
        "image_std": OPENAI_CLIP_STD,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": 224},
    },
    # CLIP's rule with an int size read as the shorter side, odd margins on both axes
    "clip_int_odd": {
        "image_processor_type": "CLIPImageProcessor",
        "size": 101,
        "default_to_square": False,
        "crop_size": 63,
        "resample": 2,
    },
    # a SigLIP retriever's: 224 square, bicubic, mean/std 0.5
    "siglip": {
        "image_processor_type": "SiglipImageProcessor",
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 224, "width": 224},
    },
    # ViT with a non-default filter (LANCZOS), mean/std and an awkward size
    "vit_lanczos_97": {
        "image_processor_type": "ViTImageProcessor",
        "size": {"height": 97, "width": 97},
        "resample": 1,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
    },
    # DeiT with HAMMING, an odd margin for the crop ((101 - 64) // 2 = 18 one side, 19 the other)
    "deit_hamming_odd_crop": {
        "image_processor_type": "DeiTImageProcessor",
        "size": {"height": 101, "width": 101},
        "crop_size": {"height": 64, "width": 64},
        "resample": 5,
    },
    # NEAREST, no rescale: mean and std in 0..255 units, given as one number each
    "vit_nearest_no_rescale": {
        "image_processor_type": "ViTImageProcessor",
        "size": [50, 50],
        "resample": 0,
        "do_rescale": False,
        "image_mean": 127.5,
        "image_std": 64.0,
    },
    # BOX, no normalisation (the rescaled values as they are), another rescale factor
    "blip_box_no_normalize": {
        "image_processor_type": "BlipImageProcessor",
        "size": 33,
        "resample": 4,
        "rescale_factor": 0.5,
        "do_normalize": False,
    },
}


# ---------------------------------------------------------------------- the images


def _rgba_photo(rgb: npt.NDArray[np.uint8]) -> Image.Image:
    """`rgb` with an alpha ramp 0..255 across it (every level of partial transparency)."""
    h, w, _ = rgb.shape
    alpha = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    return Image.fromarray(np.dstack([rgb, alpha.round().astype(np.uint8)]), mode="RGBA")


def _keyed_photo(rgb: npt.NDArray[np.uint8]) -> Image.Image:
    """`rgb` as a PNG with a transparency key: its most frequent colour is transparent."""
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    key = tuple(int(c) for c in colours[counts.argmax()])
    img = Image.fromarray(rgb, mode="RGB")
    img.info["transparency"] = key
    return img


@pytest.fixture(scope="module")
def photos() -> dict[str, npt.NDArray[np.uint8]]:
    """RGB photos of several shapes, and one grayscale (camera)."""
    data = pytest.importorskip("skimage.data")
    astronaut = data.astronaut()  # (512, 512, 3)
    return {
        "astronaut": astronaut,
        "coffee": data.coffee(),  # (400, 600, 3)
        "chelsea": data.chelsea(),  # (300, 451, 3)
        "rocket": data.rocket(),  # (427, 640, 3)
        "small_odd": np.ascontiguousarray(astronaut[37:60, 11:52]),  # (23, 41, 3): upsampled
        "camera": data.camera(),  # (512, 512), grayscale
    }


@pytest.fixture(scope="module")
def pil_images(photos: dict[str, npt.NDArray[np.uint8]]) -> dict[str, Image.Image]:
    images = {k: Image.fromarray(v) for k, v in photos.items()}  # camera: mode L
    images["coffee_rgba"] = _rgba_photo(photos["coffee"])
    images["chelsea_keyed"] = _keyed_photo(photos["chelsea"])
    return images


# ---------------------------------------------------------------------- the reference


def hf_processor(config: dict[str, Any]) -> Any:
    """transformers' slow (PIL) image processor for `config`, built as from_pretrained does."""
    transformers = pytest.importorskip("transformers")
    name = config.get("image_processor_type") or config["feature_extractor_type"]
    name = name.replace("FeatureExtractor", "ImageProcessor")
    # 5.x: the PIL backend is <Name>Pil (<Name> is torchvision's when that is installed);
    # 4.x: <Name> is the slow, PIL one
    cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
    return cls.from_dict(config)


def hf_pixels(processor: Any, images: Any, **kwargs: Any) -> npt.NDArray[np.float32]:
    out = processor(images, return_tensors="np", **kwargs)["pixel_values"]
    return np.asarray(out, dtype=np.float32)


def tolerance(cfg: PreprocessConfig, ref: npt.NDArray[np.float32]) -> float:
    """Twice the float32 bound of the module docstring: eps/2 * X / std + eps * |out|."""
    x_max = 255.0 * cfg.rescale
    one = EPS32 / 2 * x_max / min(cfg.std) + EPS32 * float(np.abs(ref).max())
    return 2 * one


def check_close(got: npt.NDArray[np.float32], ref: npt.NDArray[np.float32], cfg: Any) -> None:
    assert got.dtype == np.float32
    assert got.shape == ref.shape
    err = float(np.abs(got.astype(np.float64) - ref).max())
    assert err <= tolerance(cfg, ref), f"max abs error {err:.3g}"


# ---------------------------------------------------------------------- parity


@pytest.mark.export
@pytest.mark.parametrize("case", sorted(HF_CONFIGS))
def test_batch_of_pil_images_matches_hf(case: str, pil_images: dict[str, Image.Image]) -> None:
    config = HF_CONFIGS[case]
    cfg = PreprocessConfig.from_hf(config)
    images = list(pil_images.values())
    # mmfast converts every image to RGB (grayscale, RGBA and keyed ones included), as the
    # processors do with do_convert_rgb (BLIP's default; ViT's and DeiT's refuse a 1- or
    # 4-channel image without it, and leave a transparency key alone). That is transformers
    # 5's conversion: 4.x's ViT/DeiT processors have no do_convert_rgb and its BLIP drops
    # alpha without compositing, so under 4.x only the RGB images are compared.
    transformers = pytest.importorskip("transformers")
    if int(transformers.__version__.split(".")[0]) < 5:
        images = [im for im in images if im.mode == "RGB" and "transparency" not in im.info]
    ref = hf_pixels(hf_processor(config), images, do_convert_rgb=True)
    assert ref.shape == (len(images), 3, cfg.size, cfg.size)
    check_close(preprocess_batch(images, cfg), ref, cfg)


@pytest.mark.export
@pytest.mark.parametrize("case", sorted(HF_CONFIGS))
def test_uint8_arrays_match_hf(case: str, photos: dict[str, npt.NDArray[np.uint8]]) -> None:
    config = HF_CONFIGS[case]
    cfg = PreprocessConfig.from_hf(config)
    arrays = [a for a in photos.values() if a.ndim == 3]  # (H, W, 3) uint8
    ref = hf_pixels(hf_processor(config), arrays)
    check_close(preprocess_batch(arrays, cfg), ref, cfg)
    for i, a in enumerate(arrays):  # one at a time, as a view too (not C-contiguous)
        check_close(preprocess(a, cfg), ref[i], cfg)
    view = photos["astronaut"][::2, 1::3]
    check_close(preprocess(view, cfg), hf_pixels(hf_processor(config), view)[0], cfg)


@pytest.mark.export
@pytest.mark.parametrize("case", ["vit", "deit", "blip"])
@pytest.mark.parametrize("name", ["chelsea", "small_odd"])
def test_single_pil_image_matches_hf(
    case: str, name: str, pil_images: dict[str, Image.Image]
) -> None:
    config = HF_CONFIGS[case]
    cfg = PreprocessConfig.from_hf(config)
    img = pil_images[name]
    ref = hf_pixels(hf_processor(config), img)  # the processor's own defaults, one image
    check_close(preprocess(img, cfg), ref[0], cfg)


@pytest.mark.export
def test_class_defaults_match_hf(pil_images: dict[str, Image.Image]) -> None:
    """A config naming only the processor takes that processor's defaults, as transformers'
    do (ViT: 224 bilinear; DeiT: 256 bicubic, crop 224; BLIP: 384 bicubic, CLIP mean/std)."""
    img = pil_images["rocket"]
    for name, side in [("ViT", 224), ("DeiT", 224), ("Blip", 384), ("CLIP", 224), ("Siglip", 224)]:
        config = {"image_processor_type": f"{name}ImageProcessor"}
        cfg = PreprocessConfig.from_hf(config)
        assert cfg.size == side
        check_close(preprocess(img, cfg), hf_pixels(hf_processor(config), img)[0], cfg)


# ---------------------------------------------------------------------- from_hf, no transformers


def test_from_hf_maps_the_captioners_configs() -> None:
    third = 1 / 255
    assert PreprocessConfig.from_hf(HF_CONFIGS["vit"]) == PreprocessConfig(
        size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="pil_bilinear"
    )
    assert PreprocessConfig.from_hf(HF_CONFIGS["deit"]) == PreprocessConfig(
        size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        resample="pil_bicubic",
        resize=256,
        rescale=third,
    )
    blip = PreprocessConfig.from_hf(HF_CONFIGS["blip"])
    assert (blip.size, blip.resize, blip.resample) == (384, None, "pil_bicubic")
    assert blip.mean == tuple(OPENAI_CLIP_MEAN) and blip.std == tuple(OPENAI_CLIP_STD)
    assert blip.rescale == third
    no_rescale = PreprocessConfig.from_hf(HF_CONFIGS["vit_nearest_no_rescale"])
    assert (no_rescale.rescale, no_rescale.mean, no_rescale.std) == (
        1.0,
        (127.5,) * 3,
        (64.0,) * 3,
    )
    no_norm = PreprocessConfig.from_hf(HF_CONFIGS["blip_box_no_normalize"])
    assert (no_norm.mean, no_norm.std, no_norm.rescale) == ((0.0,) * 3, (1.0,) * 3, 0.5)


@pytest.mark.parametrize(
    "type_key, name",
    [
        ("image_processor_type", "DeiTImageProcessor"),
        ("image_processor_type", "DeiTImageProcessorPil"),
        ("image_processor_type", "DeiTImageProcessorFast"),
        ("feature_extractor_type", "DeiTFeatureExtractor"),
    ],
)
def test_from_hf_class_defaults(type_key: str, name: str) -> None:
    # a missing key and a null one both take the class default, as in transformers
    cfg = PreprocessConfig.from_hf({type_key: name, "resample": None, "crop_size": None})
    assert (cfg.size, cfg.resize, cfg.resample) == (224, 256, "pil_bicubic")
    assert (cfg.mean, cfg.std, cfg.rescale) == ((0.5,) * 3, (0.5,) * 3, 1 / 255)


def test_from_hf_every_filter_code() -> None:
    for name, code in PIL_FILTERS.items():
        cfg = PreprocessConfig.from_hf(
            {"image_processor_type": "ViTImageProcessor", "resample": code}
        )
        assert cfg.resample == name


def test_from_hf_unknown_processor_with_every_key() -> None:
    """Another processor's config is mapped if it spells out every key the steps need."""
    config: dict[str, Any] = {
        "image_processor_type": "SomeOtherImageProcessor",
        "do_resize": True,
        "size": {"height": 64, "width": 64},
        "resample": 3,
        "do_center_crop": False,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.1, 0.2, 0.3],
        "image_std": [0.4, 0.5, 0.6],
        "do_pad": False,
    }
    cfg = PreprocessConfig.from_hf(config)
    assert (cfg.size, cfg.resample, cfg.mean) == (64, "pil_bicubic", (0.1, 0.2, 0.3))
    for key in ["size", "resample", "do_center_crop", "rescale_factor", "image_std", "do_pad"]:
        partial = {k: v for k, v in config.items() if k != key}
        with pytest.raises(ValueError, match=rf"key '{key}' is missing.*'SomeOtherImageProcessor'"):
            PreprocessConfig.from_hf(partial)


VIT = {"image_processor_type": "ViTImageProcessor"}
DEIT = {"image_processor_type": "DeiTImageProcessor"}


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {**VIT, "size": {"shortest_edge": 224}},
            r"'size' is \{'shortest_edge': 224\} without.*aspect",
        ),
        ({**VIT, "size": 224, "default_to_square": False}, r"'size' is 224 without a center crop"),
        (
            {**VIT, "size": {"shortest_edge": 224, "longest_edge": 300}, "do_center_crop": True},
            r"only shortest_edge alone",
        ),
        ({**VIT, "size": {"height": 224, "width": 320}}, r"'size' is 224 x 320.*square"),
        ({**VIT, "size": [224]}, r"'size' must be an int, \[height, width\] or an object"),
        ({**VIT, "size": {"height": 0, "width": 0}}, r"'size' needs positive integer"),
        ({**DEIT, "crop_size": 300}, r"'crop_size' 300 is larger than 'size' 256.*zero padding"),
        ({**DEIT, "crop_size": {"height": 224, "width": 200}}, r"'crop_size' is 224 x 200"),
        ({**VIT, "do_pad": True}, r"'do_pad' true"),
        ({**VIT, "do_resize": False}, r"'do_resize' false"),
        ({**VIT, "do_resize": 1}, r"'do_resize' must be true or false, got 1"),
        ({**VIT, "crop_pct": 0.875}, r"key 'crop_pct' is not one mmfast reproduces"),
        ({**VIT, "resample": 6}, r"'resample' must be a PIL filter code .*got 6"),
        ({**VIT, "resample": "bicubic"}, r"'resample' must be a PIL filter code"),
        ({**VIT, "resample": True}, r"'resample' must be a PIL filter code"),
        ({**VIT, "rescale_factor": 0}, r"'rescale_factor' must be a positive number, got 0"),
        ({**VIT, "image_mean": [0.5, 0.5]}, r"'image_mean' must be a finite number or 3"),
        ({**VIT, "image_std": [0.5, 0.0, 0.5]}, r"'image_std' must be a positive number or 3"),
        ({**VIT, "data_format": "channels_last"}, r"'data_format' 'channels_last'"),
        ({"size": 224}, r"key 'do_pad' is missing, and None is not a processor"),
    ],
)
def test_from_hf_refuses_what_it_cannot_reproduce(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessConfig.from_hf(config)


def test_from_hf_refuses_a_non_object() -> None:
    with pytest.raises(ValueError, match="a preprocessor config is a JSON object, got list"):
        PreprocessConfig.from_hf([])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the config's new fields


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resample": "bicubic"}, r"unsupported resample 'bicubic' \(one of bilinear_antialias, "),
        ({"resize": 80}, r"resize \(a center crop after resizing\) needs a pil_\* resample"),
        ({"resample": "pil_bicubic", "resize": 63}, r"resize must be in size\.\.4096.*got 63"),
        ({"resample": "pil_bicubic", "resize": 5000}, r"resize must be in size\.\.4096"),
        ({"rescale": 0.5}, r"rescale must be 1/255 with resample 'bilinear_antialias'"),
        ({"resample": "pil_box", "rescale": 0.0}, r"rescale must be positive and finite, got 0"),
        ({"resample": "pil_box", "rescale": float("nan")}, r"rescale must be positive and finite"),
    ],
)
def test_config_checks_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PreprocessConfig(size=64, **kwargs)


def test_new_fields_round_trip_and_old_dicts_load(tmp_path: Path) -> None:
    cfg = PreprocessConfig.from_hf(HF_CONFIGS["deit_hamming_odd_crop"])
    d = json.loads(json.dumps(cfg.to_dict()))
    assert (d["resize"], d["rescale"], d["resample"]) == (101, 1 / 255, "pil_hamming")
    assert PreprocessConfig.from_dict(d) == cfg
    cfg.save(tmp_path / "p.json")
    assert PreprocessConfig.load(tmp_path / "p.json") == cfg
    odd = PreprocessConfig.from_hf(HF_CONFIGS["vit_nearest_no_rescale"])
    assert PreprocessConfig.from_dict(json.loads(json.dumps(odd.to_dict()))) == odd
    # a dict written before the fields existed: their defaults, the float path as it was
    old = {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "resample": "bilinear_antialias"}
    old_cfg = PreprocessConfig.from_dict({**old, "version": 1, "extra": {}})
    assert (old_cfg.resize, old_cfg.rescale) == (None, 1 / 255)
    assert old_cfg == PreprocessConfig(size=32)


def test_pil_path_rounds_like_transformers() -> None:
    """Pillow's 8-bit resize, a crop, float32(float64(x) * rescale), then float32 (x - m) / s:
    a flat image gives exactly that value; the center crop takes (R - S) // 2 from the top."""
    cfg = PreprocessConfig(
        size=4, mean=(0.1, 0.2, 0.3), std=(0.7, 0.8, 0.9), resample="pil_bicubic", resize=7
    )
    flat = np.full((9, 13, 3), 201, np.uint8)
    want = (np.float32(201 * (1 / 255)) - np.float32(0.2)) / np.float32(0.8)
    assert preprocess(flat, cfg)[1, 0, 0] == want
    ramp = np.repeat(np.arange(7, dtype=np.uint8)[:, None, None] * 30, 7, 1).repeat(3, 2)
    nearest = PreprocessConfig(size=4, mean=(0, 0, 0), std=(1, 1, 1), resample="pil_nearest")
    cropped = preprocess(ramp, dataclasses.replace(nearest, resize=7))
    # top = (7 - 4) // 2: rows 1..4 of 7
    assert cropped[0, :, 0].tolist() == [np.float32(30 * v * (1 / 255)) for v in (1, 2, 3, 4)]


def test_pil_path_refuses_what_the_float_path_refuses() -> None:
    cfg = PreprocessConfig(size=8, resample="pil_bilinear")
    with pytest.raises(ValueError, match=r"expected an \(H, W, 3\) RGB array, got shape"):
        preprocess(np.zeros((4, 4, 4), np.uint8), cfg)
    with pytest.raises(ValueError, match="expected a uint8 array, got float32"):
        preprocess(np.zeros((4, 4, 3), np.float32), cfg)
    with pytest.raises(ValueError, match=r"each side must be 1\.\.32768"):
        preprocess(Image.new("RGB", (40000, 1)), cfg)


def test_transparency_key_is_composited_on_white() -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)
    img = Image.fromarray(rgb, mode="RGB")
    img.info["transparency"] = (10, 20, 30)
    out = np.asarray(to_rgb(img))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 0, 0]
    gray = Image.fromarray(np.array([[7, 8]], np.uint8), mode="L")
    gray.info["transparency"] = 7
    assert np.asarray(to_rgb(gray)).tolist() == [[[255, 255, 255], [8, 8, 8]]]


# ---------------------------------------------------------------------- through a manifest


V1: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "manifests_v1.json").read_text()
)


def test_manifest_without_the_new_keys_loads() -> None:
    old = copy.deepcopy(V1["caption_lstm"])
    assert "resize" not in old["preprocess"] and "rescale" not in old["preprocess"]
    m = Manifest.from_dict(old)
    assert (m.preprocess.resize, m.preprocess.rescale) == (None, 1 / 255)
    del old["preprocess"]["size"]  # the keys of format 1 are still required
    with pytest.raises(BundleFormatError, match=r"missing required key 'preprocess\.size'"):
        Manifest.from_dict(old)


@pytest.mark.parametrize("case", ["deit", "blip", "vit_nearest_no_rescale"])
def test_manifest_round_trips_an_hf_config(case: str) -> None:
    cfg = PreprocessConfig.from_hf(HF_CONFIGS[case])
    data = copy.deepcopy(V1["caption_lstm"])
    data["preprocess"] = json.loads(json.dumps(cfg.to_dict()))
    assert Manifest.from_dict(data).preprocess == cfg


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("resize", "256", r"'preprocess\.resize' must be an integer, got a string"),
        ("resize", True, r"'preprocess\.resize' must be an integer, got a boolean"),
        ("rescale", "0.5", r"'preprocess\.rescale' must be a number, got a string"),
        ("resize", 300, r"'preprocess': resize \(a center crop after resizing\) needs a pil_"),
        ("rescale", 0.5, r"'preprocess': rescale must be 1/255 with resample"),
    ],
)
def test_manifest_checks_the_new_keys(key: str, value: object, message: str) -> None:
    data = copy.deepcopy(V1["caption_lstm"])
    data["preprocess"][key] = value
    with pytest.raises(BundleFormatError, match=message):
        Manifest.from_dict(data)
