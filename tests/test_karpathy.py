"""mmfast.karpathy: writer -> reader round trips (COCO layout with filepath, Flickr30k without),
split selection (restval, limit, captions per image), and every malformed entry named."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmfast.karpathy import KarpathyImage, read_karpathy, read_karpathy_images, write_karpathy

COCO = [
    KarpathyImage("a.jpg", "train", ("a cat", "a cat on a mat"), "train2014"),
    KarpathyImage("b.jpg", "test", ("two dogs", "dogs run", "a park"), "val2014"),
    KarpathyImage("c.jpg", "restval", ("a red bus",), "val2014"),
    KarpathyImage("d.jpg", "test", ("a boat", "the sea", "a sail", "blue", "water", "sun"), "v"),
    KarpathyImage("e.jpg", "val", ("a tree",), "val2014"),
    KarpathyImage("f.jpg", "test", ("snow",), "val2014"),
]


def test_round_trip(tmp_path):
    path = tmp_path / "dataset_coco.json"
    write_karpathy(path, COCO, dataset="coco")
    dataset, images = read_karpathy_images(path)
    assert dataset == "coco"
    assert images == COCO


def test_written_file_has_karpathy_fields(tmp_path):
    path = tmp_path / "d.json"
    write_karpathy(path, COCO[:2], dataset="coco")
    doc = json.loads(path.read_text())
    first, second = doc["images"]
    assert first["filepath"] == "train2014" and first["filename"] == "a.jpg"
    assert first["sentences"][1]["tokens"] == ["a", "cat", "on", "a", "mat"]
    assert [s["sentid"] for s in second["sentences"]] == second["sentids"] == [2, 3, 4]
    assert (first["imgid"], second["imgid"]) == (0, 1)


def test_split_selection(tmp_path):
    path = tmp_path / "dataset_coco.json"
    write_karpathy(path, COCO, dataset="coco")
    root = tmp_path / "coco"
    s = read_karpathy(path, root, "test")
    assert s.name == "test" and s.dataset == "coco"
    assert s.image_paths == [root / "val2014/b.jpg", root / "v/d.jpg", root / "val2014/f.jpg"]
    assert s.captions == ["two dogs", "dogs run", "a park", *COCO[3].sentences, "snow"]
    assert s.image_of_text.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 1, 2]
    assert s.image_of_text.dtype == np.int64

    five = read_karpathy(path, root, "test", captions_per_image=5)
    assert five.captions == ["two dogs", "dogs run", "a park", *COCO[3].sentences[:5], "snow"]
    assert five.image_of_text.tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 2]

    one = read_karpathy(path, root, "test", captions_per_image=1, limit=2)
    assert one.captions == ["two dogs", "a boat"] and len(one.image_paths) == 2
    assert read_karpathy(path, root, "test", limit=100).image_paths == s.image_paths


def test_restval(tmp_path):
    path = tmp_path / "dataset_coco.json"
    write_karpathy(path, COCO)
    train = read_karpathy(path, tmp_path, "train")
    assert [p.name for p in train.image_paths] == ["a.jpg"]
    merged = read_karpathy(path, tmp_path, "train", restval=True)
    assert [p.name for p in merged.image_paths] == ["a.jpg", "c.jpg"]  # file order
    assert merged.captions == ["a cat", "a cat on a mat", "a red bus"]
    assert merged.image_of_text.tolist() == [0, 0, 1]
    # restval only changes "train"; "restval" alone can be asked for.
    assert read_karpathy(path, tmp_path, "test", restval=True).image_paths[0].name == "b.jpg"
    assert [p.name for p in read_karpathy(path, tmp_path, "restval").image_paths] == ["c.jpg"]


def test_flickr_without_filepath(tmp_path):
    path = tmp_path / "dataset_flickr30k.json"
    images = [
        KarpathyImage("1000092795.jpg", "test", tuple(f"caption {i}" for i in range(5))),
        KarpathyImage("10002456.jpg", "train", ("x",)),
    ]
    write_karpathy(path, images, dataset="flickr30k")
    assert "filepath" not in json.loads(path.read_text())["images"][0]
    s = read_karpathy(path, tmp_path / "flickr30k-images", "test")
    assert s.image_paths == [tmp_path / "flickr30k-images" / "1000092795.jpg"]
    assert s.dataset == "flickr30k" and len(s.captions) == 5


def test_raw_is_stripped_and_extra_keys_ignored(tmp_path):
    path = tmp_path / "d.json"
    doc = {
        "images": [
            {
                "filename": "x.jpg",
                "split": "val",
                "sentences": [{"raw": "  A dog runs. \n", "tokens": ["a", "dog", "runs"]}],
                "imgid": 0,
                "cocoid": 42,
                "sentids": [0],
            }
        ]
    }
    path.write_text(json.dumps(doc))
    s = read_karpathy(path, tmp_path, "val")
    assert s.captions == ["A dog runs."] and s.dataset == ""


def _valid() -> dict[str, Any]:
    return {
        "dataset": "coco",
        "images": [
            {"filepath": "p", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "a"}]},
            {"filepath": "p", "filename": "b.jpg", "split": "test", "sentences": [{"raw": "b"}]},
        ],
    }


def _set(doc: dict[str, Any], keys: tuple[Any, ...], value: Any) -> None:
    target = doc
    for k in keys[:-1]:
        target = target[k]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value


_DELETE = object()
MALFORMED = [
    # (where in the document, the new value, what the message must say)
    (("images", 1, "filename"), _DELETE, r"images\[1\]: missing key 'filename'"),
    (("images", 1, "split"), _DELETE, r"images\[1\]: missing key 'split'"),
    (("images", 1, "sentences"), _DELETE, r"images\[1\]: missing key 'sentences'"),
    (("images", 1, "filename"), 7, r"images\[1\]\.filename: expected a non-empty string"),
    (("images", 1, "filename"), "  ", r"images\[1\]\.filename: expected a non-empty string"),
    (("images", 1, "filename"), "/etc/passwd", r"images\[1\]\.filename: .* leave the image root"),
    (("images", 1, "filepath"), "../up", r"images\[1\]\.filepath: .* leave the image root"),
    (("images", 1, "filepath"), ["p"], r"images\[1\]\.filepath: expected a non-empty string"),
    (("images", 1, "split"), "dev", r"images\[1\]\.split: expected one of train, val, test"),
    (("images", 1, "split"), None, r"images\[1\]\.split: expected one of"),
    (("images", 1, "sentences"), [], r"images\[1\]\.sentences: expected a non-empty list"),
    (("images", 1, "sentences"), "a b", r"images\[1\]\.sentences: expected a non-empty list"),
    (("images", 1, "sentences", 0), "a b", r"images\[1\]\.sentences\[0\]: expected an object"),
    (("images", 1, "sentences", 0, "raw"), _DELETE, r"sentences\[0\]: missing key 'raw'"),
    (("images", 1, "sentences", 0, "raw"), " ", r"sentences\[0\]\.raw: expected a non-empty"),
    (("images", 1, "sentences", 0, "raw"), 3, r"sentences\[0\]\.raw: expected a non-empty"),
    (("images", 1), "b.jpg", r"images\[1\]: expected an object, got str"),
    (("images",), {"a": 1}, r"images: expected a list, got dict"),
    (("images",), _DELETE, r'expected an object with an "images" list'),
    (("dataset",), 5, r"dataset: expected a string"),
]


@pytest.mark.parametrize(("keys", "value", "message"), MALFORMED)
def test_malformed_entry_is_named(tmp_path, keys, value, message):
    doc = copy.deepcopy(_valid())
    _set(doc, keys, value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as e:
        read_karpathy(path, tmp_path, "test")
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"not valid JSON"),
        ("[1, 2]", r'expected an object with an "images" list'),
        ("", r"not valid JSON"),
    ],
)
def test_not_a_karpathy_file(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        read_karpathy(path, tmp_path)
    assert str(path) in str(e.value)


def test_not_utf8(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"images": ["\xff"]}')
    with pytest.raises(ValueError, match=r"not UTF-8"):
        read_karpathy(path, tmp_path)


def test_bad_requests(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_valid()))
    with pytest.raises(ValueError, match=r"d\.json: split 'dev': expected one of"):
        read_karpathy(path, tmp_path, "dev")
    with pytest.raises(ValueError, match=r"d\.json: no images in split 'val'"):
        read_karpathy(path, tmp_path, "val")
    with pytest.raises(ValueError, match=r"no images in split 'restval\+train'"):
        read_karpathy(path, tmp_path, "train", restval=True)
    with pytest.raises(ValueError, match=r"limit: expected a positive int"):
        read_karpathy(path, tmp_path, limit=0)
    with pytest.raises(ValueError, match=r"captions_per_image: expected a positive int"):
        read_karpathy(path, tmp_path, captions_per_image=0)
    with pytest.raises(FileNotFoundError):
        read_karpathy(tmp_path / "missing.json", tmp_path)


def test_writer_refuses_what_the_reader_would(tmp_path):
    path = tmp_path / "d.json"
    for bad, message in [
        (KarpathyImage("a.jpg", "test", ()), r"images\[1\]\.sentences: expected a non-empty"),
        (KarpathyImage("a.jpg", "dev", ("x",)), r"images\[1\]\.split: expected one of"),
        (KarpathyImage("", "test", ("x",)), r"images\[1\]\.filename: expected a non-empty"),
    ]:
        with pytest.raises(ValueError, match=message):
            write_karpathy(path, [COCO[0], bad])
        assert not path.exists()
    with pytest.raises(TypeError, match=r"images\[0\]: expected a KarpathyImage"):
        write_karpathy(path, [{"filename": "a.jpg"}])  # type: ignore[list-item]


def test_relative_path():
    assert KarpathyImage("x.jpg", "test", ("a",), "val2014").relative_path == "val2014/x.jpg"
    assert KarpathyImage("x.jpg", "test", ("a",)).relative_path == "x.jpg"
    assert Path("r") / KarpathyImage("x.jpg", "test", ("a",)).relative_path == Path("r/x.jpg")
