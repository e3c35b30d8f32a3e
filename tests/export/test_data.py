"""The shapes generator and the COCO-captions loader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")

from mmfast.preprocess import PreprocessConfig
from mmfast_export.cli import main_data
from mmfast_export.coco import load_captions, load_vqa, resolve_splits
from mmfast_export.shapes import (
    COLOURS,
    SHAPES,
    ShapesConfig,
    captions,
    questions,
    sample_scene,
    write_dataset,
)

pytestmark = pytest.mark.export


def test_generator_is_deterministic_and_worker_independent(tmp_path: Path) -> None:
    assert (
        main_data(
            [
                "shapes",
                "--out",
                str(tmp_path / "a"),
                "--num-images",
                "300",
                "--size",
                "32",
                "--workers",
                "2",
            ]
        )
        == 0
    )
    write_dataset(ShapesConfig(num_images=300, size=32), tmp_path / "b", workers=1)
    for split in ("train", "val", "test"):
        for kind in ("captions", "vqa"):
            a = (tmp_path / "a" / f"{kind}_{split}.json").read_text()
            assert a == (tmp_path / "b" / f"{kind}_{split}.json").read_text()
    for name in ("train/000000.png", "val/000240.png", "test/000299.png"):
        pa = np.asarray(Image.open(tmp_path / "a" / "images" / name))
        pb = np.asarray(Image.open(tmp_path / "b" / "images" / name))
        assert pa.shape == (32, 32, 3)
        np.testing.assert_array_equal(pa, pb)
    summary = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert summary["splits"]["train"]["images"] == 240
    assert summary["splits"]["test"]["images"] == 30
    # a different seed gives a different dataset
    write_dataset(ShapesConfig(num_images=300, size=32, seed=1), tmp_path / "c", workers=1)
    assert (tmp_path / "c" / "captions_test.json").read_text() != a


def test_captions_and_questions_describe_the_scene() -> None:
    cfg = ShapesConfig(size=64)
    n_objects = []
    for i in range(200):
        scene = sample_scene(cfg, i)
        objs = scene.objects
        n_objects.append(len(objs))
        assert 1 <= len(objs) <= 4
        assert [o.x for o in objs] == sorted(o.x for o in objs)
        caps = captions(scene, cfg.size)
        assert len(caps) == 5 and len(set(caps)) == 5
        for o in objs:  # the full description names every object, left to right
            assert f"{o.size} {o.colour} {o.shape}" in caps[0]
        for qa in questions(scene, cfg):
            q, a = qa["question"], qa["answer"]
            if q == "how many shapes are there ?":
                assert a == ["zero", "one", "two", "three", "four"][len(objs)]
            if q.startswith("is there a "):
                c, s = q[len("is there a ") : -2].split()
                assert (a == "yes") == any(o.colour == c and o.shape == s for o in objs)
            if q.startswith("what colour is the "):
                s = q.split()[4]
                assert [o.colour for o in objs if o.shape == s] == [a]
            if qa["type"] == "relation" and "left of" in q:
                w = q.split()
                a_obj = next(o for o in objs if (o.colour, o.shape) == (w[2], w[3]))
                b_obj = next(o for o in objs if (o.colour, o.shape) == (w[-3], w[-2]))
                assert (a == "yes") == (a_obj.x < b_obj.x)
            assert a in {
                *COLOURS,
                *SHAPES,
                "yes",
                "no",
                "small",
                "large",
                "zero",
                "one",
                "two",
                "three",
                "four",
            }
    assert set(n_objects) == {1, 2, 3, 4}


def test_coco_loader_on_a_hand_made_dataset(tmp_path: Path) -> None:
    """Any COCO-captions folder: images of other sizes and modes, no test split."""
    img_dir = tmp_path / "pics"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(img_dir / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").save(img_dir / "b.png")
    Image.new("RGBA", (33, 20), (10, 200, 30, 128)).save(img_dir / "c.png")
    coco = {
        "images": [
            {"id": 7, "file_name": "a.jpg"},
            {"id": 3, "file_name": "b.png"},
            {"id": 9, "file_name": "c.png"},
            {"id": 11, "file_name": "none.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "caption": "A noisy picture."},
            {"id": 2, "image_id": 3, "caption": "a gray square"},
            {"id": 3, "image_id": 7, "caption": "random colours"},
            {"id": 4, "image_id": 9, "caption": "a green rectangle"},
        ],
    }
    (tmp_path / "captions_train.json").write_text(json.dumps(coco))
    (tmp_path / "captions_val.json").write_text(json.dumps(coco))
    splits = resolve_splits(tmp_path, image_root=img_dir)
    assert splits["test"] == splits["val"]
    data = load_captions(splits["train"], PreprocessConfig(size=24))
    assert data.image_ids == [3, 7, 9]  # sorted by id; the image without captions is skipped
    assert data.captions[1] == ["A noisy picture.", "random colours"]
    assert tuple(data.pixels.shape) == (3, 3, 24, 24)
    with pytest.raises(FileNotFoundError, match="captions_train"):
        resolve_splits(tmp_path / "nothing")


def test_vqa_loader(tiny_shapes: Path) -> None:
    splits = resolve_splits(tiny_shapes)
    data = load_captions(splits["test"], PreprocessConfig(size=32))
    assert splits["test"].vqa_json is not None
    qa = load_vqa(splits["test"].vqa_json, data)
    assert len(qa.questions) >= 2 * len(data.image_ids)
    assert set(qa.image_index) == set(range(len(data.image_ids)))
    assert data.pixels.dtype.is_floating_point is False  # already 32 px: kept as uint8


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_images", 2, "num_images must be at least 3, got 2"),
        ("num_images", 3.5, "num_images must be an integer, got 3.5"),
        ("size", 4, "size must be 8..1024 px, got 4"),
        ("seed", -1, "seed must be at least 0, got -1"),
        ("val_fraction", 1.0, "val_fraction must be in [0, 1), got 1.0"),
        ("test_fraction", float("nan"), "test_fraction must be in [0, 1), got nan"),
        ("noise", float("inf"), "noise must be a finite number >= 0, got inf"),
        ("texture_prob", 1.5, "texture_prob must be in [0, 1], got 1.5"),
        ("max_objects", 0, "max_objects must be 1..4, got 0"),
        ("max_objects", True, "max_objects must be an integer, got True"),
    ],
)
def test_a_bad_shapes_config_names_the_field(field, value, message) -> None:
    # the same checks as `mmfast data shapes`' options, for callers of the Python API
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ShapesConfig(**{field: value})


def test_fractions_leaving_no_training_images_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^val_fraction \+ test_fraction must be below 1 "):
        ShapesConfig(val_fraction=0.6, test_fraction=0.4)
    with pytest.raises(ValueError, match=r"^workers must be at least 1, got 0$"):
        write_dataset(ShapesConfig(num_images=3), tmp_path / "d", workers=0)
    assert not (tmp_path / "d").exists()  # refused before anything is written
