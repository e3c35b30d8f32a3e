"""Karpathy-split caption datasets (``dataset_coco.json``, ``dataset_flickr30k.json``): read a
split for retrieval evaluation, and write the format.

The layout (Karpathy & Fei-Fei 2015, the splits every COCO/Flickr30k retrieval paper uses)::

    {"dataset": "coco",
     "images": [{"filepath": "val2014",            # absent in Flickr30k
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "train" | "val" | "test" | "restval",
                 "sentences": [{"raw": "A man ...", "tokens": ["a", "man", ...], ...}, ...],
                 "imgid": 0, "cocoid": 391895, ...}, ...]}

An image's path is ``image_root / filepath / filename``. COCO's ``restval`` (the 30k val2014
images outside Karpathy's val and test) is usually trained on: ``read_karpathy(...,
split="train", restval=True)`` merges it. Every entry is checked when the file is read; a
malformed one is a ValueError naming the file and the entry (``images[12].sentences[3].raw``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ._checks import positive_int

__all__ = [
    "SPLITS",
    "KarpathyImage",
    "KarpathySplit",
    "read_karpathy",
    "read_karpathy_images",
    "write_karpathy",
]

SPLITS: tuple[str, ...] = ("train", "val", "test", "restval")


@dataclass(frozen=True)
class KarpathyImage:
    """One entry of the file: an image and its captions (the sentences' "raw" strings)."""

    filename: str
    split: str
    sentences: tuple[str, ...]
    filepath: str | None = None  # COCO's folder (e.g. "val2014"); None in Flickr30k

    @property
    def relative_path(self) -> str:
        return self.filename if self.filepath is None else f"{self.filepath}/{self.filename}"


@dataclass(frozen=True)
class KarpathySplit:
    """A split ready for retrieval evaluation: images, captions and which image each caption
    describes (captions of one image are consecutive, images in file order)."""

    name: str  # the split asked for ("train" also holds restval when merged)
    dataset: str  # the file's "dataset" ("coco", "flickr30k", ...; "" if absent)
    image_paths: list[Path]  # (n_images,) image_root / filepath / filename
    captions: list[str]  # (n_texts,) stripped "raw" sentences
    image_of_text: np.ndarray  # (n_texts,) int64 index into image_paths


def _str(value: object, where: str, *, path_part: bool = False) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: expected a non-empty string, got {value!r:.80}")
    # A file path must stay under the image root: no absolute paths, no "..".
    if path_part and (
        PurePosixPath(value).is_absolute() or Path(value).is_absolute() or ".." in Path(value).parts
    ):
        raise ValueError(f"{where}: {value!r} would leave the image root")
    return value


def _parse_image(entry: object, where: str) -> KarpathyImage:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
    for key in ("filename", "split", "sentences"):
        if key not in entry:
            raise ValueError(f"{where}: missing key {key!r}")
    filename = _str(entry["filename"], f"{where}.filename", path_part=True)
    filepath = entry.get("filepath")
    if filepath is not None:
        filepath = _str(filepath, f"{where}.filepath", path_part=True)
    split = entry["split"]
    if split not in SPLITS:
        raise ValueError(f"{where}.split: expected one of {', '.join(SPLITS)}, got {split!r:.40}")
    sentences = entry["sentences"]
    if not isinstance(sentences, list) or not sentences:
        raise ValueError(f"{where}.sentences: expected a non-empty list, got {sentences!r:.80}")
    raws: list[str] = []
    for j, s in enumerate(sentences):
        w = f"{where}.sentences[{j}]"
        if not isinstance(s, dict):
            raise ValueError(f"{w}: expected an object, got {type(s).__name__}")
        if "raw" not in s:
            raise ValueError(f"{w}: missing key 'raw'")
        raws.append(_str(s["raw"], f"{w}.raw").strip())
    return KarpathyImage(filename, split, tuple(raws), filepath)


def read_karpathy_images(path: str | Path) -> tuple[str, list[KarpathyImage]]:
    """Every entry of a Karpathy-split file, checked: (the "dataset" name, the images)."""
    path = Path(path)
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if not isinstance(doc, dict) or "images" not in doc:
        raise ValueError(f'{path}: expected an object with an "images" list (Karpathy format)')
    if not isinstance(doc["images"], list):
        raise ValueError(f"{path}: images: expected a list, got {type(doc['images']).__name__}")
    dataset = doc.get("dataset", "")
    if not isinstance(dataset, str):
        raise ValueError(f"{path}: dataset: expected a string, got {dataset!r:.40}")
    images = [_parse_image(e, f"{path}: images[{i}]") for i, e in enumerate(doc["images"])]
    return dataset, images


def read_karpathy(
    path: str | Path,
    image_root: str | Path,
    split: str = "test",
    *,
    restval: bool = False,
    limit: int | None = None,
    captions_per_image: int | None = None,
) -> KarpathySplit:
    """One split of a Karpathy-split file.

    restval: with ``split="train"``, also take the "restval" images (after checking, in file
    order). limit: the first ``limit`` images of the split. captions_per_image: each image's
    first N captions (default: all; the standard protocol uses 5, and COCO has a few images
    with 6 or 7); an image with fewer keeps all it has.
    """
    if split not in SPLITS:
        raise ValueError(f"{path}: split {split!r}: expected one of {', '.join(SPLITS)}")
    if limit is not None:
        limit = positive_int("limit", limit)
    if captions_per_image is not None:
        captions_per_image = positive_int("captions_per_image", captions_per_image)
    dataset, images = read_karpathy_images(path)
    wanted = {split, "restval"} if restval and split == "train" else {split}
    chosen = [im for im in images if im.split in wanted][:limit]
    if not chosen:
        raise ValueError(f"{path}: no images in split {'+'.join(sorted(wanted))!r}")
    root = Path(image_root)
    captions: list[str] = []
    image_of_text: list[int] = []
    for i, im in enumerate(chosen):
        caps = im.sentences[:captions_per_image]
        captions.extend(caps)
        image_of_text.extend([i] * len(caps))
    return KarpathySplit(
        name=split,
        dataset=dataset,
        image_paths=[root / im.relative_path for im in chosen],
        captions=captions,
        image_of_text=np.asarray(image_of_text, dtype=np.int64),
    )


def _tokens(raw: str) -> list[str]:
    # Karpathy's tokens: lower case, punctuation dropped.
    return re.findall(r"[a-z0-9]+", raw.lower())


def write_karpathy(
    path: str | Path, images: Sequence[KarpathyImage], dataset: str = "custom"
) -> None:
    """Write images as a Karpathy-split file (what :func:`read_karpathy` reads; "imgid" is
    the position, "sentid" counts sentences over the file)."""
    path = Path(path)
    out: list[dict[str, Any]] = []
    sentid = 0
    for i, im in enumerate(images):
        if not isinstance(im, KarpathyImage):
            raise TypeError(f"images[{i}]: expected a KarpathyImage, got {type(im).__name__}")
        # The reader's checks, so that nothing is written that cannot be read back.
        entry: dict[str, Any] = {
            "filename": im.filename,
            "split": im.split,
            "sentences": [{"raw": s} for s in im.sentences],
        }
        if im.filepath is not None:
            entry["filepath"] = im.filepath
        _parse_image(entry, f"images[{i}]")
        ids = list(range(sentid, sentid + len(im.sentences)))
        entry["sentences"] = [
            {"raw": s, "tokens": _tokens(s), "imgid": i, "sentid": n}
            for s, n in zip(im.sentences, ids, strict=True)
        ]
        entry.update({"imgid": i, "sentids": ids})
        out.append(entry)
        sentid += len(im.sentences)
    path.write_text(json.dumps({"images": out, "dataset": dataset}), encoding="utf-8")
