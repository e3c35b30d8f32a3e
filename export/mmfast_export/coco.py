"""Loaders for COCO-captions-format datasets (and the shapes VQA JSON).

A COCO captions file is ``{"images": [{"id", "file_name", ...}], "annotations": [{"image_id",
"caption"}, ...]}``; ``file_name`` is relative to an image folder. Any such dataset trains with
the same command as the generated one (see ``resolve_splits``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfast.preprocess import PreprocessConfig, load_rgb

from .transforms import resize

__all__ = [
    "CaptionData",
    "SplitFiles",
    "VqaData",
    "load_captions",
    "load_images",
    "load_vqa",
    "resolve_splits",
]


@dataclass
class CaptionData:
    """One split: images (as pixels) and their captions."""

    image_ids: list[int]
    file_names: list[str]
    pixels: torch.Tensor  # (N, 3, S, S) uint8, or float32 in [0, 255] when resized
    captions: list[list[str]]  # captions[i]: the captions of image i


@dataclass
class VqaData:
    image_index: list[int]  # index into the split's images
    questions: list[str]
    answers: list[str]
    types: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SplitFiles:
    captions_json: Path
    image_root: Path
    vqa_json: Path | None


def _image_root(data_dir: Path) -> Path:
    return data_dir / "images" if (data_dir / "images").is_dir() else data_dir


def resolve_splits(
    data_dir: str | Path,
    train_json: str | Path | None = None,
    val_json: str | Path | None = None,
    test_json: str | Path | None = None,
    image_root: str | Path | None = None,
) -> dict[str, SplitFiles]:
    """Find ``captions_{train,val,test}.json`` (and ``vqa_{split}.json``) under ``data_dir``.

    Explicit paths override. A missing val split is replaced by the test split and vice versa;
    the train split is required.
    """
    d = Path(data_dir)
    root = Path(image_root) if image_root is not None else _image_root(d)
    given = {"train": train_json, "val": val_json, "test": test_json}
    out: dict[str, SplitFiles] = {}
    for split, explicit in given.items():
        p = Path(explicit) if explicit is not None else d / f"captions_{split}.json"
        if not p.is_file():
            continue
        vqa = d / f"vqa_{split}.json"
        out[split] = SplitFiles(p, root, vqa if vqa.is_file() else None)
    if "train" not in out:
        raise FileNotFoundError(
            f"no training captions: expected {d / 'captions_train.json'} (COCO captions format) "
            "or --train-json"
        )
    if "val" not in out and "test" in out:
        out["val"] = out["test"]
    if "test" not in out and "val" in out:
        out["test"] = out["val"]
    return out


def load_images(root: Path, file_names: list[str], cfg: PreprocessConfig) -> torch.Tensor:
    """Decode images to RGB and resize (torch path) to cfg.size. Returns (N, 3, S, S): uint8
    when every image already has the target size (no resampling needed), else float32."""
    arrays = []
    for fn in file_names:
        arrays.append(np.asarray(load_rgb(root / fn)))  # (H, W, 3) uint8
    s = cfg.size
    if all(a.shape[:2] == (s, s) for a in arrays):
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    out = torch.empty(len(arrays), 3, s, s, dtype=torch.float32)
    for i, a in enumerate(arrays):
        x = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).float()
        out[i] = resize(x, s)[0]
    return out


def load_captions(
    files: SplitFiles, cfg: PreprocessConfig, limit: int | None = None
) -> CaptionData:
    coco: dict[str, Any] = json.loads(files.captions_json.read_text())
    if "images" not in coco or "annotations" not in coco:
        raise ValueError(f"{files.captions_json}: not COCO captions format (images, annotations)")
    caps: dict[int, list[str]] = defaultdict(list)
    for a in coco["annotations"]:
        caps[int(a["image_id"])].append(str(a["caption"]).strip())
    images = [im for im in coco["images"] if caps.get(int(im["id"]))]
    images.sort(key=lambda im: int(im["id"]))
    if limit is not None:
        images = images[:limit]
    if not images:
        raise ValueError(f"{files.captions_json}: no image has a caption")
    ids = [int(im["id"]) for im in images]
    names = [str(im["file_name"]) for im in images]
    pixels = load_images(files.image_root, names, cfg)
    return CaptionData(ids, names, pixels, [caps[i] for i in ids])


def load_vqa(path: Path, data: CaptionData) -> VqaData:
    """Questions whose image is in ``data`` (same split)."""
    raw: dict[str, Any] = json.loads(path.read_text())
    index = {img_id: k for k, img_id in enumerate(data.image_ids)}
    out = VqaData([], [], [], [])
    for q in raw["questions"]:
        k = index.get(int(q["image_id"]))
        if k is None:
            continue
        out.image_index.append(k)
        out.questions.append(str(q["question"]))
        out.answers.append(str(q["answer"]))
        out.types.append(str(q.get("type", "")))
    return out
