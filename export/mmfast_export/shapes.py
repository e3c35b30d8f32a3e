"""The "shapes" dataset: a deterministic generator of simple scenes with captions and Q&A.

Each image (RGB, ``size`` px square) holds 1-4 non-overlapping objects, each a (shape, colour,
size) at a position, on a plain, striped or checkered background, with optional pixel noise.
Every image gets one caption per template (5, see ``captions``) and several question/answer
pairs (see ``questions``). Image ``i`` is generated from ``np.random.default_rng([seed, i])``
alone, so the dataset is identical whatever the order or the number of worker processes.

Output (``write_dataset``)::

    DIR/images/{train,val,test}/000123.png
    DIR/captions_{split}.json   COCO captions format: images[], annotations[] (+ objects per image)
    DIR/vqa_{split}.json        {"questions": [{question_id, image_id, question, answer, type}]}
    DIR/vqa_v2/                 the same questions in the VQA v2 format, ten simulated human
                                answers each (mmfast_export.vqa_v2; scored by `mmfast eval vqa`)
    DIR/dataset.json            the generator's parameters and counts
    DIR/dataset_shapes.json     the same splits and captions in Karpathy-split format
                                (mmfast.karpathy; image root DIR/images)
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmfast.karpathy import KarpathyImage, write_karpathy

from .field_checks import FieldError, at_least, finite_at_least, in_range
from .vqa_v2 import write_vqa_v2

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 40, 40),
    "green": (40, 185, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 200),
    "cyan": (40, 210, 220),
}
SIZES: dict[str, float] = {"small": 0.085, "large": 0.155}  # radius as a fraction of the image
BACKGROUNDS: tuple[str, ...] = ("plain", "striped", "checkered")
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three", "four")
COUNT_PROBS: tuple[float, ...] = (0.1, 0.3, 0.3, 0.3)  # P(1), P(2), P(3), P(4) objects
SPLITS: tuple[str, ...] = ("train", "val", "test")
MIN_DX = 4.0  # px at 64: objects' centres differ at least this much horizontally (order is clear)
# Image side: rendering supersamples each image, so a side of a few thousand pixels already
# needs gigabytes a worker; the models train on 32-128 px.
SIZE_RANGE = (8, 1024)


@dataclass(frozen=True)
class ShapesConfig:
    num_images: int = 10000
    size: int = 64
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    noise: float = 6.0  # std of Gaussian pixel noise (0-255 scale); 0 disables
    texture_prob: float = 0.5  # probability of a striped/checkered background
    max_objects: int = 4

    def __post_init__(self) -> None:
        at_least("num_images", self.num_images, 3)  # one image in each split
        in_range("size", self.size, *SIZE_RANGE, unit=" px")
        at_least("seed", self.seed, 0)  # numpy seeds are non-negative
        for name in ("val_fraction", "test_fraction"):
            in_range(name, getattr(self, name), 0.0, 1.0, open_hi=True)
        if not self.val_fraction + self.test_fraction < 1.0:
            raise FieldError(
                ["val_fraction", "test_fraction"], "must be below 1 (leave images to train on)"
            )
        finite_at_least("noise", self.noise, 0.0)
        in_range("texture_prob", self.texture_prob, 0.0, 1.0)
        in_range("max_objects", self.max_objects, 1, len(COUNT_PROBS))


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    x: float
    y: float
    r: float

    def words(self, with_size: bool = True) -> str:
        return (
            f"a {self.size} {self.colour} {self.shape}"
            if with_size
            else (f"a {self.colour} {self.shape}")
        )


@dataclass(frozen=True)
class Scene:
    image_id: int
    objects: tuple[Obj, ...]
    background: str
    bg_level: int

    def to_dict(self) -> dict[str, Any]:
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}


# ----------------------------------------------------------------------------------- scenes


def sample_scene(cfg: ShapesConfig, image_id: int) -> Scene:
    rng = np.random.default_rng([cfg.seed, image_id])
    probs = np.asarray(COUNT_PROBS[: cfg.max_objects], dtype=np.float64)
    n = int(rng.choice(np.arange(1, len(probs) + 1), p=probs / probs.sum()))
    s = float(cfg.size)
    min_dx = MIN_DX * s / 64.0
    objs: list[Obj] = []
    tries = 0
    while len(objs) < n and tries < 500:
        tries += 1
        size = str(rng.choice(list(SIZES)))
        r = SIZES[size] * s * float(rng.uniform(0.93, 1.07))
        x = float(rng.uniform(r + 1, s - r - 1))
        y = float(rng.uniform(r + 1, s - r - 1))
        ok = all(np.hypot(x - o.x, y - o.y) > r + o.r + 2 and abs(x - o.x) >= min_dx for o in objs)
        if not ok:
            continue
        shape = str(rng.choice(SHAPES))
        colour = str(rng.choice(list(COLOURS)))
        if any(o.shape == shape and o.colour == colour and o.size == size for o in objs):
            continue  # identical objects make captions and questions ambiguous
        objs.append(Obj(shape, colour, size, round(x, 2), round(y, 2), round(r, 2)))
    textured = rng.random() < cfg.texture_prob
    background = str(rng.choice(BACKGROUNDS[1:])) if textured else "plain"
    bg_level = int(rng.integers(25, 95))
    objs.sort(key=lambda o: o.x)  # canonical order: left to right
    return Scene(image_id, tuple(objs), background, bg_level)


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.85
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":
        return [(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)]
    if shape == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    if shape == "cross":
        a, b = r, r * 0.38
        return [
            (x - b, y - a),
            (x + b, y - a),
            (x + b, y - b),
            (x + a, y - b),
            (x + a, y + b),
            (x + b, y + b),
            (x + b, y + a),
            (x - b, y + a),
            (x - b, y + b),
            (x - a, y + b),
            (x - a, y - b),
            (x - b, y - b),
        ]
    raise ValueError(f"no polygon for {shape!r}")


def render(scene: Scene, cfg: ShapesConfig) -> Image.Image:
    """Draw at 2x and downsample (antialiased edges), then add noise."""
    rng = np.random.default_rng([cfg.seed, scene.image_id, 1])
    ss = 2
    big = cfg.size * ss
    level = scene.bg_level
    bg = np.full((big, big, 3), level, dtype=np.int16)
    bg += rng.integers(-12, 13, size=3, dtype=np.int16)  # a slight tint
    if scene.background != "plain":
        period = int(rng.integers(6, 13)) * ss
        yy, xx = np.mgrid[0:big, 0:big]
        if scene.background == "striped":
            mask = ((xx + yy) // period) % 2 == 0
        else:
            mask = ((xx // period) + (yy // period)) % 2 == 0
        bg[mask] += 22
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        col = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[o.colour])
        x, y, r = o.x * ss, o.y * ss, o.r * ss
        if o.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=col)
        else:
            draw.polygon(_polygon(o.shape, x, y, r), fill=col)
    img = img.reduce(ss)
    if cfg.noise > 0:
        a = np.asarray(img, dtype=np.float32)
        a = a + rng.normal(0.0, cfg.noise, size=a.shape).astype(np.float32)
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB")
    return img


# --------------------------------------------------------------------------------- language


def join_words(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return f"{parts[0]} and {parts[1]}"
    return " , ".join(parts[:-1]) + f" and {parts[-1]}"


def region_name(o: Obj, size: int) -> str:
    col = min(int(o.x / size * 3), 2)
    row = min(int(o.y / size * 3), 2)
    v = ("top ", "", "bottom ")[row]
    h = ("left", "center", "right")[col]
    if row == 1 and col == 1:
        return "center"
    if col == 1:
        return v.strip()
    return f"{v}{h}"


def captions(scene: Scene, size: int) -> list[str]:
    """Five captions, one per template; each is a deterministic function of the scene."""
    objs = scene.objects  # left to right
    n = len(objs)
    bg = f"on a {scene.background} background"
    # 0: full description, left to right, with sizes
    if n == 1:
        c0 = f"{objs[0].words()} in the {region_name(objs[0], size)}"
    elif n == 2:
        c0 = f"{objs[0].words()} to the left of {objs[1].words()}"
    else:
        c0 = join_words([o.words() for o in objs])
    # 1: "two shapes : a red circle and a blue square"
    c1 = f"{NUMBERS[n]} shape{'s' if n > 1 else ''} : " + join_words(
        [o.words(with_size=False) for o in objs]
    )
    # 2: "there is ...", top to bottom
    top_down = sorted(objs, key=lambda o: o.y)
    c2 = "there is " + join_words([o.words() for o in top_down])
    # 3: shapes grouped and counted, and the background
    counts = Counter(o.shape for o in objs)
    groups = sorted(counts.items(), key=lambda kv: (-kv[1], SHAPES.index(kv[0])))
    c3 = (
        join_words(
            [
                f"a {s}" if k == 1 else f"{NUMBERS[k]} {s}{'es' if s == 'cross' else 's'}"
                for s, k in groups
            ]
        )
        + f" {bg}"
    )
    # 4: vertical relation of the topmost and bottommost objects
    if n == 1:
        c4 = f"{objs[0].words(with_size=False)} alone {bg}"
    else:
        c4 = f"{top_down[0].words(with_size=False)} above {top_down[-1].words(with_size=False)}"
    return [c0, c1, c2, c3, c4]


def questions(scene: Scene, cfg: ShapesConfig) -> list[dict[str, str]]:
    """Question/answer pairs with unambiguous answers: count, colour, shape, size, existence,
    relative position."""
    rng = np.random.default_rng([cfg.seed, scene.image_id, 2])
    objs = scene.objects
    n = len(objs)
    qs: list[dict[str, str]] = []

    def add(q: str, a: str, t: str) -> None:
        qs.append({"question": q, "answer": a, "type": t})

    add("how many shapes are there ?", NUMBERS[n], "count")
    colour = str(rng.choice(list(COLOURS)))
    add(
        f"how many {colour} shapes are there ?",
        NUMBERS[sum(o.colour == colour for o in objs)],
        "count",
    )
    by_shape = Counter(o.shape for o in objs)
    by_colour = Counter(o.colour for o in objs)
    cands = [o for o in objs if by_shape[o.shape] == 1]
    if cands:
        o = cands[int(rng.integers(len(cands)))]
        add(f"what colour is the {o.shape} ?", o.colour, "colour")
    cands = [o for o in objs if by_colour[o.colour] == 1]
    if cands:
        o = cands[int(rng.integers(len(cands)))]
        add(f"what shape is the {o.colour} object ?", o.shape, "shape")
    cands = [o for o in objs if sum((r.colour, r.shape) == (o.colour, o.shape) for r in objs) == 1]
    if cands:
        o = cands[int(rng.integers(len(cands)))]
        add(f"what size is the {o.colour} {o.shape} ?", o.size, "size")
    # existence: one present, one absent (colour+shape combination)
    present = {(p.colour, p.shape) for p in objs}
    p = objs[int(rng.integers(n))]
    add(f"is there a {p.colour} {p.shape} ?", "yes", "exist")
    for _ in range(20):
        c, s = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        if (c, s) not in present:
            add(f"is there a {c} {s} ?", "no", "exist")
            break
    # relative position between two objects identified by colour+shape
    uniq = [q for q in objs if sum((r.colour, r.shape) == (q.colour, q.shape) for r in objs) == 1]
    if len(uniq) >= 2:
        i, j = rng.choice(len(uniq), size=2, replace=False)
        a, b = uniq[int(i)], uniq[int(j)]
        thr = MIN_DX * cfg.size / 64.0
        if rng.random() < 0.5 and abs(a.x - b.x) >= thr:
            rel, truth = ("left of", a.x < b.x) if rng.random() < 0.5 else ("right of", a.x > b.x)
        elif abs(a.y - b.y) >= thr:
            rel, truth = ("above", a.y < b.y) if rng.random() < 0.5 else ("below", a.y > b.y)
        else:
            rel, truth = ("left of", a.x < b.x)
        prep = "to the " if rel.endswith("of") else ""
        add(
            f"is the {a.colour} {a.shape} {prep}{rel} the {b.colour} {b.shape} ?",
            "yes" if truth else "no",
            "relation",
        )
    return qs


# ---------------------------------------------------------------------------------- writing


def split_of(cfg: ShapesConfig, i: int) -> str:
    n_test = round(cfg.num_images * cfg.test_fraction)
    n_val = round(cfg.num_images * cfg.val_fraction)
    n_train = cfg.num_images - n_val - n_test
    return "train" if i < n_train else ("val" if i < n_train + n_val else "test")


def _make_one(args: tuple[ShapesConfig, int, str]) -> dict[str, Any]:
    cfg, i, out = args
    scene = sample_scene(cfg, i)
    split = split_of(cfg, i)
    rel = f"{split}/{i:06d}.png"
    render(scene, cfg).save(Path(out) / "images" / rel, optimize=False, compress_level=1)
    return {
        "id": i,
        "split": split,
        "file_name": rel,
        "captions": captions(scene, cfg.size),
        "questions": questions(scene, cfg),
        "scene": scene.to_dict(),
    }


def write_dataset(cfg: ShapesConfig, out: str | Path, workers: int | None = None) -> dict[str, Any]:
    """Generate the dataset under ``out``; returns a summary (also written to dataset.json)."""
    at_least("workers", workers, 1)
    t0 = time.perf_counter()
    out = Path(out)
    for s in SPLITS:
        (out / "images" / s).mkdir(parents=True, exist_ok=True)
    workers = workers or min(os.cpu_count() or 1, 4)
    jobs = [(cfg, i, str(out)) for i in range(cfg.num_images)]
    if workers > 1 and cfg.num_images >= 256:
        with ProcessPoolExecutor(workers) as ex:
            items = list(ex.map(_make_one, jobs, chunksize=64))
    else:
        items = [_make_one(j) for j in jobs]
    summary: dict[str, Any] = {"generator": "shapes", "config": asdict(cfg), "splits": {}}
    ann_id = 0
    q_id = 0
    for split in SPLITS:
        coco: dict[str, Any] = {
            "info": {"description": f"mmfast shapes dataset ({split})", "version": "1"},
            "images": [],
            "annotations": [],
        }
        vqa: dict[str, Any] = {"questions": []}
        for it in items:
            if it["split"] != split:
                continue
            coco["images"].append(
                {
                    "id": it["id"],
                    "file_name": it["file_name"],
                    "width": cfg.size,
                    "height": cfg.size,
                    **it["scene"],
                }
            )
            for c in it["captions"]:
                coco["annotations"].append({"id": ann_id, "image_id": it["id"], "caption": c})
                ann_id += 1
            for q in it["questions"]:
                vqa["questions"].append({"question_id": q_id, "image_id": it["id"], **q})
                q_id += 1
        (out / f"captions_{split}.json").write_text(json.dumps(coco))
        (out / f"vqa_{split}.json").write_text(json.dumps(vqa))
        write_vqa_v2(out, split, vqa["questions"], seed=cfg.seed)
        summary["splits"][split] = {
            "images": len(coco["images"]),
            "captions": len(coco["annotations"]),
            "questions": len(vqa["questions"]),
        }
    # The Karpathy-split file retrieval is evaluated on (`mmfast eval retrieval --images
    # DIR/images`); file_name is "{split}/000123.png", the split's folder is the filepath.
    write_karpathy(
        out / "dataset_shapes.json",
        [
            KarpathyImage(
                filename=Path(it["file_name"]).name,
                split=it["split"],
                sentences=tuple(it["captions"]),
                filepath=it["split"],
            )
            for it in items
        ],
        dataset="shapes",
    )
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
