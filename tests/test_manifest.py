"""The typed manifest (mmfast.bundle.Manifest): format 1 as the exporter writes it loads; a
missing, unknown or mistyped key is refused naming its path and the file; the special tokens a
captioner decodes with are the manifest's.

data/manifests_v1.json: manifests written by ``export_run`` before the typed manifest existed
(commit a6952ce; validation reports cut to one case per graph)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mmfast.bundle import (
    BundleFormatError,
    DecoderSection,
    GraphSection,
    Manifest,
    load_bundle,
    write_manifest,
)
from mmfast.preprocess import PreprocessConfig
from mmfast.tokenizer import WORD_LEVEL, SpecialTokens

V1: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "manifests_v1.json").read_text()
)
DELETE = object()


def exported(kind: str) -> dict[str, Any]:
    """A copy of the manifest the exporter wrote for a `kind` model."""
    return copy.deepcopy(V1[kind])


def written(root: Path, manifest: dict[str, Any]) -> Path:
    """`root` with a file for each one `manifest` lists, and its manifest.json."""
    root.mkdir(exist_ok=True)
    for name in manifest["files"]:
        (root / name).write_text(f"stand-in for {name}\n")
    body = {k: v for k, v in manifest.items() if k not in ("format_version", "files")}
    write_manifest(root, body)
    return root


def edited(m: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    *parents, last = path
    d = m
    for key in parents:
        d = d[key]
    if value is DELETE:
        del d[last]
    else:
        d[last] = value
    return m


# ----------------------------------------------------------------- format 1 keeps loading


@pytest.mark.parametrize("kind", sorted(V1))
def test_manifests_as_exported_parse_to_typed_sections(kind):
    m = Manifest.from_dict(exported(kind))
    assert m.format_version == 1 and m.kind == kind and m.opset == 18
    assert m.special_tokens == WORD_LEVEL
    assert m.preprocess == PreprocessConfig.from_dict(V1[kind]["preprocess"])
    assert all(isinstance(g, GraphSection) for g in m.graphs.values())
    assert all(isinstance(g.inputs, tuple) and g.atol == 1e-4 for g in m.graphs.values())
    assert m.validation == V1[kind]["validation"] and m.provenance == V1[kind]["provenance"]
    assert isinstance(m.decoder, DecoderSection)  # every kind's export writes one
    if m.task == "caption":
        assert m.decoder.state_updates and m.decoder.max_len == 12
        assert m.retrieval is None and m.vqa is None and m.answers is None
    elif m.task == "retrieval":
        assert m.retrieval is not None and m.retrieval.rerank is True
        assert m.retrieval.max_len == 16 and isinstance(m.retrieval.logit_scale, float)
    else:
        assert m.vqa is not None and m.vqa.max_len == 16 and m.answers == "answers.txt"


@pytest.mark.parametrize("kind", sorted(V1))
def test_write_manifest_then_load_bundle(kind, tmp_path):
    root = written(tmp_path / "b", exported(kind))
    b = load_bundle(root)
    on_disk = json.loads((root / "manifest.json").read_text())
    assert set(on_disk["files"]) == set(V1[kind]["files"])
    assert b.manifest == Manifest.from_dict({**V1[kind], "files": on_disk["files"]})
    assert b.task == V1[kind]["task"]


def test_graph_notes_may_be_absent(tmp_path):
    # bundles exported before the export kept its specs' notes
    m = exported("caption_lstm")
    for g in m["graphs"].values():
        del g["notes"]
    b = load_bundle(written(tmp_path / "b", m))
    assert {g.notes for g in b.manifest.graphs.values()} == {""}


# ------------------------------------------------------------- refused, naming the key


def key_path(key: str) -> tuple[str, ...]:
    """'graphs[encoder.onnx].atol' -> ('graphs', 'encoder.onnx', 'atol')"""
    return tuple(a or b for a, b in re.findall(r"\[([^\]]+)\]|([^.\[]+)", key))


UNKNOWN = [  # at any depth
    ("caption_lstm", "beam_size"),
    ("caption_lstm", "decoder.beam_size"),
    ("retrieval", "graphs[text_tower.onnx].shapes"),
    ("vqa", "special_tokens.sep"),
    ("caption_lstm", "preprocess.crop"),
]
MISSING = [
    ("caption_lstm", "vocab"),
    ("caption_lstm", "decoder.state_updates"),
    ("caption_lstm", "preprocess.size"),  # every preprocessing key is spelled out in a bundle
    ("retrieval", "preprocess.mean"),
    ("caption_lstm", "decoder.max_len"),  # required, may be null
    ("caption_lstm", "graphs[encoder.onnx].atol"),
    ("vqa", "special_tokens.eos"),
    ("retrieval", "retrieval.logit_scale"),
    ("caption_transformer", "decoder"),  # a task's sections are required for that task
    ("caption_lstm", "kind"),
    ("retrieval", "retrieval"),
    ("vqa", "answers"),
]
WRONG = [  # kind, key, value, what the message says
    ("caption_lstm", "opset", "18", "'opset' must be an integer, got a string '18'"),
    ("caption_lstm", "decoder.max_len", 12.5, "'decoder.max_len' must be an integer, got a number"),
    ("caption_lstm", "decoder.state_updates[h]", 1, "'decoder.state_updates[h]' must be a string"),
    (
        "caption_lstm",
        "special_tokens.eos",
        True,
        "'special_tokens.eos' must be an integer, got a boolean",
    ),
    ("caption_lstm", "validation", [], "'validation' must be an object, got a list []"),
    ("caption_lstm", "files[vocab.txt]", None, "'files[vocab.txt]' must be a string, got null"),
    ("retrieval", "retrieval.rerank", "yes", "'retrieval.rerank' must be true or false"),
    ("retrieval", "retrieval.max_len", None, "'retrieval.max_len' must be an integer, got null"),
    ("vqa", "graphs[answer_head.onnx].inputs", "regions", "'graphs[answer_head.onnx].inputs' must"),
    ("vqa", "graphs[answer_head.onnx].outputs", ["o", 2], "'graphs[answer_head.onnx].outputs[1]'"),
    # values the sections' own checks refuse
    (
        "caption_lstm",
        "task",
        "detect",
        "'task' must be one of caption, retrieval, vqa, rerank, got 'detect'",
    ),
    ("caption_lstm", "special_tokens.pad", -1, "'special_tokens': pad: expected a token id"),
    (
        "caption_lstm",
        "preprocess.size",
        "big",
        "'preprocess.size' must be an integer, got a string",
    ),
    (
        "caption_lstm",
        "preprocess.size",
        True,
        "'preprocess.size' must be an integer, got a boolean",
    ),
    ("caption_lstm", "preprocess.size", 32.9, "'preprocess.size' must be an integer, got a number"),
    ("caption_lstm", "preprocess.mean", "123", "'preprocess.mean' must be a list, got a string"),
    ("caption_lstm", "preprocess.std", [1, 2], "'preprocess': mean and std need 3 values"),
    ("caption_lstm", "preprocess.extra", [["a", 1]], "'preprocess.extra' must be an object"),
    ("caption_lstm", "preprocess.version", 2, "'preprocess': preprocessing version 2 is not 1"),
    ("caption_lstm", "decoder.max_len", 0, "'decoder': max_len must be at least 1, got 0"),
    ("retrieval", "retrieval.max_len", -3, "'retrieval': max_len must be at least 1, got -3"),
    ("vqa", "vqa.max_len", 0, "'vqa': max_len must be at least 1, got 0"),
    # the files it names must be listed, and inside the bundle
    ("caption_lstm", "vocab", "../vocab.txt", "'vocab' names '../vocab.txt', which leaves the"),
    ("vqa", "answers", "/etc/passwd", "'answers' names '/etc/passwd', an absolute path"),
    (
        "caption_lstm",
        "vocab",
        "words.txt",
        "'vocab' names 'words.txt', which 'files' does not list",
    ),
    ("retrieval", "files[reranker.onnx]", DELETE, "'graphs[reranker.onnx]' names 'reranker.onnx'"),
    (
        "vqa",
        "files[answers.txt]",
        DELETE,
        "'answers' names 'answers.txt', which 'files' does not list",
    ),
]
BAD = [
    *((kind, key, 3, f"unknown key '{key}'") for kind, key in UNKNOWN),
    *((kind, key, DELETE, f"missing required key '{key}'") for kind, key in MISSING),
    *WRONG,
]


def test_a_tasks_sections_are_named_when_missing(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(edited(exported("vqa"), ("vqa",), DELETE)))
    with pytest.raises(BundleFormatError, match=r"missing required key 'vqa' \(a vqa bundle needs"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(("kind", "key", "value", "message"), BAD)
def test_a_bad_manifest_is_refused_naming_the_key_and_file(kind, key, value, message, tmp_path):
    m = edited(exported(kind), key_path(key), value)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleFormatError, match=re.escape(message)) as e:
        load_bundle(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'manifest.json'}: ")


@pytest.mark.parametrize(
    ("kind", "key", "value", "message"), [c for c in BAD if not c[1].startswith("files")]
)
def test_write_manifest_refuses_what_load_bundle_would(kind, key, value, message, tmp_path):
    m = exported(kind)
    written(tmp_path, m)  # a valid one first: the files exist (it lists them itself)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(BundleFormatError, match=re.escape(message)):
        written(tmp_path, edited(m, key_path(key), value))
    assert not (tmp_path / "manifest.json").exists()


# -------------------------------------------------- the special tokens are the manifest's

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from mmfast._pipeline import pad_tokens  # noqa: E402
from mmfast.captioner import Captioner  # noqa: E402

# A word-level vocabulary whose specials are not at 0-3, and a step graph that ignores the
# image: logits = TABLE[token], a chain <bos> -> red -> circle -> <eos>.
WORDS = ["red", "<unk>", "circle", "<pad>", "<eos>", "<bos>", "square"]
IDS = SpecialTokens(pad=3, bos=5, eos=4, unk=1)
NEXT = {IDS.bos: 0, 0: 2, 2: IDS.eos}  # any other token -> <eos>


def chain_captioner(root: Path, special_tokens: SpecialTokens) -> Path:
    v = len(WORDS)
    table = np.zeros((v, v), np.float32)
    for tok in range(v):
        table[tok, NEXT.get(tok, IDS.eos)] = 6.0
    encoder = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["h"], axes=[2, 3], keepdims=0)],
        "encoder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 8, 8])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", 3])],
    )
    step = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "tokens"], ["logits"], axis=0),
            helper.make_node("Identity", ["h"], ["h_out"]),
            helper.make_node("Softmax", ["h"], ["attention"], axis=1),
        ],
        "decoder_step",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B"]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", 3]),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", v]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["B", 3]),
        ],
        initializer=[helper.make_tensor("table", TensorProto.FLOAT, [v, v], table.ravel())],
    )
    root.mkdir()
    for name, g in (("encoder.onnx", encoder), ("decoder_step.onnx", step)):
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(model, root / name)
    (root / "vocab.txt").write_text("\n".join(WORDS) + "\n")

    def graph(inputs: list[str], outputs: list[str]) -> dict[str, Any]:
        dynamic = {i: {"0": "batch"} for i in inputs}
        return {"inputs": inputs, "outputs": outputs, "dynamic": dynamic, "atol": 0, "rtol": 0}

    write_manifest(
        root,
        {
            "task": "caption",
            "kind": "caption_lstm",
            "config": {},
            "opset": 17,
            "graphs": {
                "encoder.onnx": graph(["images"], ["h"]),
                "decoder_step.onnx": graph(["tokens", "h"], ["logits", "h_out", "attention"]),
            },
            "preprocess": PreprocessConfig(size=8).to_dict(),
            "vocab": "vocab.txt",
            "special_tokens": vars(special_tokens),
            "decoder": {"state_updates": {"h": "h_out"}, "max_len": None},
            "validation": {},
            "provenance": {},
        },
    )
    return root


@pytest.mark.parametrize("beam", [1, 3])
def test_captioner_decodes_with_the_manifests_special_tokens(beam, tmp_path):
    cap = Captioner.load(chain_captioner(tmp_path / "b", IDS), threads=1)
    assert cap.tokenizer.special_tokens == IDS
    image = np.zeros((8, 8, 3), np.uint8)
    (c,) = cap.caption([image], beam_size=beam, max_len=6)
    assert c.tokens == [0, 2] and c.text == "red circle"
    assert c.score == pytest.approx(3 * (6.0 - np.log(np.exp(6.0) + len(WORDS) - 1)), abs=1e-5)


def test_a_vocabulary_disagreeing_with_the_special_tokens_is_refused(tmp_path):
    root = chain_captioner(tmp_path / "b", WORD_LEVEL)
    with pytest.raises(
        BundleFormatError,
        match=r"vocab\.txt: the vocabulary must hold <pad> at id 0, it holds it at",
    ) as e:
        Captioner.load(root)
    assert "'red'" not in str(e.value)  # where <pad> is, never what the file holds there


def test_texts_are_padded_with_the_pad_id():
    got = pad_tokens([[5, 0, 4], [5, 4]], max_len=8, pad=IDS.pad)
    np.testing.assert_array_equal(got, [[5, 0, 4], [5, 4, 3]])
    np.testing.assert_array_equal(pad_tokens([[5, 0, 2, 4]], max_len=2, pad=3), [[5, 0]])


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_nan_and_infinity_are_refused(constant, tmp_path):
    # Python's json reads them; they are not JSON, and a NaN logit_scale made every score NaN.
    text = json.dumps(exported("retrieval")).replace(
        '"logit_scale": ', f'"logit_scale": {constant}, "_was": ', 1
    )
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(BundleFormatError, match=f"{constant} is not a JSON value"):
        load_bundle(tmp_path)


def test_an_overflowing_logit_scale_is_refused(tmp_path):
    # 1e999 is JSON; Python's json reads it as inf, which made every fused score NaN
    exported_text = json.dumps(exported("retrieval"))
    text = re.sub(r'"logit_scale": [^,}]+', '"logit_scale": 1e999', exported_text)
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(BundleFormatError, match="'retrieval': logit_scale must be finite, got inf"):
        load_bundle(tmp_path)


def test_write_manifest_refuses_nan(tmp_path):
    m = exported("retrieval")
    m["retrieval"]["logit_scale"] = float("nan")
    with pytest.raises(BundleFormatError, match="NaN or infinity in the manifest"):
        written(tmp_path, m)
    assert not (tmp_path / "manifest.json").exists()
