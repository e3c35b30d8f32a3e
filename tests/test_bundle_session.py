"""Bundle loading checks and the ORT session wrapper."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from mmfast.bundle import (
    FORMAT_VERSION,
    BundleCorruptError,
    BundleFormatError,
    BundleMissingFileError,
    load_bundle,
    write_manifest,
)
from mmfast.preprocess import PreprocessConfig
from mmfast.session import Session, resolve_providers

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def tiny_model(path):
    """y = x * 2 + 1 over (N, 4) float32."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture
def bundle_dir(tmp_path):
    tiny_model(tmp_path / "model.onnx")
    (tmp_path / "vocab.txt").write_text("<pad>\n<bos>\n<eos>\n<unk>\n")
    graph = {"inputs": ["x"], "outputs": ["y"], "dynamic": {"x": {"0": "N"}}, "atol": 0, "rtol": 0}
    manifest = {
        "task": "retrieval",
        "config": {"a": 1},
        "opset": 17,
        "graphs": {"model.onnx": graph},
        "preprocess": PreprocessConfig(size=8).to_dict(),
        "vocab": "vocab.txt",
        "special_tokens": {"pad": 0, "bos": 1, "eos": 2, "unk": 3},
        "retrieval": {"logit_scale": 10, "rerank": False, "max_len": 4},
        "validation": {},
        "provenance": {},
    }
    write_manifest(tmp_path, manifest)
    return tmp_path


def test_round_trip(bundle_dir):
    b = load_bundle(bundle_dir)
    assert b.task == "retrieval"
    assert b.manifest.format_version == FORMAT_VERSION
    assert set(b.manifest.files) == {"model.onnx", "vocab.txt"}
    assert b.manifest.config == {"a": 1} and b.manifest.graphs["model.onnx"].inputs == ("x",)
    assert b.manifest.retrieval is not None and b.manifest.retrieval.logit_scale == 10.0
    assert b.file("vocab.txt").read_text().startswith("<pad>")
    with pytest.raises(BundleMissingFileError, match="lists no file 'nope'"):
        b.file("nope")


def test_missing_manifest_and_directory(tmp_path):
    with pytest.raises(BundleFormatError, match="does not exist"):
        load_bundle(tmp_path / "absent")
    with pytest.raises(BundleFormatError, match=r"no manifest\.json"):
        load_bundle(tmp_path)


def test_unreadable_and_incomplete_manifest(bundle_dir):
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleFormatError, match="unreadable manifest"):
        load_bundle(bundle_dir)
    (bundle_dir / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(BundleFormatError, match="missing required key 'task'"):
        load_bundle(bundle_dir)
    (bundle_dir / "manifest.json").write_text(json.dumps([1]))
    with pytest.raises(BundleFormatError, match="not a JSON object"):
        load_bundle(bundle_dir)


def test_newer_format_is_refused(bundle_dir):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (bundle_dir / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleFormatError, match="newer than this mmfast supports"):
        load_bundle(bundle_dir)


def test_missing_file(bundle_dir):
    (bundle_dir / "vocab.txt").unlink()
    with pytest.raises(BundleMissingFileError, match=r"vocab\.txt is listed"):
        load_bundle(bundle_dir)


def test_corrupt_file(bundle_dir):
    with open(bundle_dir / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleCorruptError, match=r"model\.onnx does not match the sha256"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify_hashes=False)  # explicitly skipped: loads


def test_session_runs_and_checks_feeds(bundle_dir):
    s = Session(bundle_dir / "model.onnx", threads=1)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    (y,) = s.run({"x": x})
    np.testing.assert_array_equal(y, x * 2 + 1)
    assert s.input_names == ["x"] and s.output_names == ["y"] and s.device == "cpu"
    with pytest.raises(ValueError, match="feeds: missing input"):
        s.run({})
    with pytest.raises(ValueError, match="threads: expected a positive int"):
        Session(bundle_dir / "model.onnx", threads=0)
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda'"):
        Session(bundle_dir / "model.onnx", device="tpu")


def test_optimized_model_is_saved_then_reused(bundle_dir, tmp_path):
    cache = tmp_path / "opt"
    Session(bundle_dir / "model.onnx", optimized_dir=cache)
    saved = list(cache.glob("*.opt.onnx"))
    assert len(saved) == 1
    mtime = saved[0].stat().st_mtime_ns
    s = Session(bundle_dir / "model.onnx", optimized_dir=cache)
    assert saved[0].stat().st_mtime_ns == mtime  # reused, not rewritten
    (y,) = s.run({"x": np.ones((1, 4), np.float32)})
    np.testing.assert_array_equal(y, np.full((1, 4), 3, np.float32))


def test_cuda_falls_back_to_cpu_aloud(caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with caplog.at_level(logging.WARNING, logger="mmfast"):
        assert resolve_providers("cuda") == ["CPUExecutionProvider"]
    assert "running on CPU" in caplog.text


def test_unwritable_cache_dir_still_loads(bundle_dir, tmp_path, monkeypatch):
    # A read-only bundle (e.g. in a container image): no optimised-model cache, still runs.
    # (Simulated: the tests run as root, who may write anywhere.)
    import mmfast.session as session_mod

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(session_mod.os, "makedirs", refuse)
    s = Session(bundle_dir / "model.onnx", optimized_dir=tmp_path / "cache")
    (y,) = s.run({"x": np.zeros((1, 4), np.float32)})
    np.testing.assert_array_equal(y, np.ones((1, 4), np.float32))
    assert not (tmp_path / "cache").exists()
