"""Bundle loading checks and the ORT session wrapper."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mmfast.bundle import (
    FORMAT_VERSION,
    BundleCorruptError,
    BundleError,
    BundleFormatError,
    BundleMissingFileError,
    load_bundle,
    sha256_file,
    write_manifest,
)
from mmfast.preprocess import PreprocessConfig
from mmfast.session import Session, resolve_providers
from mmfast.tokenizer import Tokenizer

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def tiny_model(path, two=2.0):
    """y = x * two + 1 over (N, 4) float32."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            helper.make_tensor("two", TensorProto.FLOAT, [], [two]),
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
    saved = list(cache.iterdir())
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


def test_unwritable_cache_dir_still_loads(bundle_dir, tmp_path, monkeypatch, caplog):
    # A cache directory that cannot be created (a read-only home, e.g. in a container): no
    # optimised-model cache, still runs. (Simulated: the tests run as root, who may write
    # anywhere.)
    import mmfast.session as session_mod

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(session_mod.os, "makedirs", refuse)
    with caplog.at_level("WARNING", logger="mmfast"):
        s = Session(bundle_dir / "model.onnx", optimized_dir=tmp_path / "cache")
    assert "cannot be created or read (read-only file system); not used" in caplog.text
    (y,) = s.run({"x": np.zeros((1, 4), np.float32)})
    np.testing.assert_array_equal(y, np.ones((1, 4), np.float32))
    assert not (tmp_path / "cache").exists()


# ------------------------------------ confinement: every file is a regular file in the bundle


def edit_manifest(bundle_dir, edit):
    m = json.loads((bundle_dir / "manifest.json").read_text())
    edit(m)
    (bundle_dir / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("key", ["vocab", "files"])
@pytest.mark.parametrize("form", ["relative", "absolute"])
def test_a_name_leaving_the_bundle_is_refused_whether_or_not_it_exists(
    key, form, bundle_dir, tmp_path_factory
):
    # The reproducer: "vocab": "../outside/vocab.txt" (or an absolute path) was read, and the
    # error type said whether the path existed. Here the recorded sha256 even matches.
    outside = tmp_path_factory.mktemp("outside")
    (outside / "vocab.txt").write_text("<pad>\n<bos>\n<eos>\n<unk>\nsecret\n")
    errors, exported = [], (bundle_dir / "manifest.json").read_text()
    for target in (outside / "vocab.txt", outside / "absent.txt"):
        (bundle_dir / "manifest.json").write_text(exported)
        name = os.path.relpath(target, bundle_dir) if form == "relative" else str(target)
        digest = sha256_file(target) if target.exists() else "0" * 64

        def edit(m, name=name, digest=digest):
            m["files"][name] = digest
            if key == "vocab":
                m["vocab"] = name

        edit_manifest(bundle_dir, edit)
        for verify in (True, False):
            with pytest.raises(BundleError) as e:
                load_bundle(bundle_dir, verify_hashes=verify)
            errors.append(e.value)
        shown = "vocab" if key == "vocab" else f"files[{name}]"
        assert f"'{shown}' names {name!r}, " in str(e.value)
        assert ("absolute path" if form == "absolute" else "leaves the bundle") in str(e.value)
    assert {type(e) for e in errors} == {BundleFormatError}
    assert not any("secret" in str(e) for e in errors)


@pytest.mark.parametrize("name", ["./vocab.txt", "a//vocab.txt", "a\\vocab.txt", ""])
def test_a_name_that_is_not_a_normalised_posix_path_is_refused(name, bundle_dir):
    edit_manifest(bundle_dir, lambda m: m["files"].update({name: "0" * 64}))
    with pytest.raises(BundleFormatError, match="not a normalised relative POSIX path"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("link", ["file", "absent file", "directory"])
def test_a_symlink_leaving_the_bundle_is_refused(link, bundle_dir, tmp_path_factory):
    # The reproducer: vocab.txt -> a file outside with the same bytes loaded; one to a missing
    # file was a BundleMissingFileError (so the error told whether the target existed).
    outside = tmp_path_factory.mktemp("outside")
    vocab = bundle_dir / "vocab.txt"
    if link == "directory":  # words/ -> outside/, the manifest lists words/vocab.txt
        (outside / "vocab.txt").write_bytes(vocab.read_bytes())
        (bundle_dir / "words").symlink_to(outside, target_is_directory=True)
        edit_manifest(bundle_dir, lambda m: m.update(vocab="words/vocab.txt"))
        edit_manifest(
            bundle_dir,
            lambda m: m["files"].update({"words/vocab.txt": m["files"].pop("vocab.txt")}),
        )
        name = "words/vocab.txt"
    else:
        if link == "file":
            (outside / "vocab.txt").write_bytes(vocab.read_bytes())  # the sha256 matches
        vocab.unlink()
        vocab.symlink_to(outside / "vocab.txt")
        name = "vocab.txt"
    for verify in (True, False):
        with pytest.raises(BundleFormatError, match=f"{name} resolves outside the bundle") as e:
            load_bundle(bundle_dir, verify_hashes=verify)
        assert str(outside) not in str(e.value)  # nor where the link leads
    if link == "file":  # a link write_manifest would list (it lists what is_file)
        with pytest.raises(BundleFormatError, match=f"{name} resolves outside the bundle"):
            write_manifest(bundle_dir, {})  # refused before the manifest is even looked at


def test_a_manifest_leaving_the_bundle_is_refused(bundle_dir, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    (bundle_dir / "manifest.json").rename(outside / "manifest.json")
    (bundle_dir / "manifest.json").symlink_to(outside / "manifest.json")
    with pytest.raises(BundleFormatError, match=r"manifest\.json resolves outside the bundle"):
        load_bundle(bundle_dir)


def test_a_symlink_inside_the_bundle_is_followed_and_checked(bundle_dir, tmp_path_factory):
    # Allowed: the bytes are the bundle's, and their sha256 is checked like any other file's
    # (a bundle may share one copy of a file under two names, or be reached through a link).
    (bundle_dir / "words").mkdir()
    (bundle_dir / "vocab.txt").rename(bundle_dir / "words" / "vocab.txt")
    (bundle_dir / "vocab.txt").symlink_to(Path("words") / "vocab.txt")
    link = tmp_path_factory.mktemp("links") / "current"
    link.symlink_to(bundle_dir, target_is_directory=True)
    for root in (bundle_dir, link):
        assert load_bundle(root).file("vocab.txt").read_text().startswith("<pad>")
    (bundle_dir / "words" / "vocab.txt").write_text("edited\n")
    with pytest.raises(BundleCorruptError, match=r"vocab\.txt does not match"):
        load_bundle(bundle_dir)


def test_a_listed_name_that_is_not_a_regular_file_is_refused(bundle_dir):
    vocab = bundle_dir / "vocab.txt"
    vocab.unlink()
    vocab.mkdir()
    with pytest.raises(BundleFormatError, match=r"vocab\.txt is listed in the manifest but not a"):
        load_bundle(bundle_dir)
    vocab.rmdir()
    vocab.symlink_to("vocab.txt")  # a loop
    with pytest.raises(BundleFormatError, match=r"vocab\.txt cannot be resolved"):
        load_bundle(bundle_dir)


def test_write_manifest_leaves_the_runtimes_cache_out(bundle_dir):
    # earlier versions kept ONNX Runtime's optimised graphs in the bundle's .ort-cache/
    (bundle_dir / ".ort-cache").mkdir()
    (bundle_dir / ".ort-cache" / "model.0123.opt").write_bytes(b"derived")
    m = json.loads((bundle_dir / "manifest.json").read_text())
    write_manifest(bundle_dir, {k: v for k, v in m.items() if k not in ("format_version", "files")})
    assert set(load_bundle(bundle_dir).manifest.files) == {"model.onnx", "vocab.txt"}


def test_no_message_quotes_the_vocabulary():
    # The reproducer: a vocabulary without <pad> first was refused quoting its first line.
    with pytest.raises(ValueError, match=r"must hold <pad> at id 0, it holds it nowhere") as e:
        Tokenizer(["root:x:0:0:secret", "<bos>", "<eos>", "<unk>"])
    assert "secret" not in str(e.value)


def test_a_vocabulary_that_is_not_utf8_is_refused_without_quoting_it(tmp_path):
    (tmp_path / "vocab.txt").write_bytes(b"<pad>\n\xe9t\xe9\n")
    with pytest.raises(ValueError, match=r"^the vocabulary is not UTF-8 text \(at byte 6\)$"):
        Tokenizer.load(tmp_path / "vocab.txt")


# ------------------------------------- the optimised-model cache: derived, checked, rebuilt

X = np.arange(8, dtype=np.float32).reshape(2, 4)


def cached_output(model, cache):
    """The model's output for X, from a session using the optimised-model cache `cache`."""
    (y,) = Session(model, optimized_dir=cache, threads=1).run({"x": X})
    return y


def test_a_replaced_graph_is_never_served_from_the_cache_whatever_its_mtime(tmp_path):
    # The reproducer: a graph replaced by a file with an older mtime (cp -p, tar, rsync -a)
    # kept running the old model, since the cache compared mtimes.
    model, cache = tmp_path / "model.onnx", tmp_path / "cache"
    tiny_model(model)
    np.testing.assert_array_equal(cached_output(model, cache), X * 2 + 1)
    tiny_model(tmp_path / "new.onnx", two=3.0)
    os.utime(tmp_path / "new.onnx", (1e9, 1e9))  # 2001: older than the cached model
    shutil.copy2(tmp_path / "new.onnx", model)  # cp -p
    np.testing.assert_array_equal(cached_output(model, cache), X * 3 + 1)


def another_graphs_entry(entry, tmp_path):
    """A well-formed cache entry, of y = x * 3 + 1."""
    tiny_model(tmp_path / "other.onnx", two=3.0)
    cached_output(tmp_path / "other.onnx", tmp_path / "other-cache")
    (other,) = (tmp_path / "other-cache").iterdir()
    return other.read_bytes()


DAMAGE = {
    "truncated": lambda entry, tmp_path: entry.read_bytes()[: entry.stat().st_size // 2],
    "emptied": lambda entry, tmp_path: b"",
    "a byte changed": lambda entry, tmp_path: entry.read_bytes()[:-1] + b"\x00",
    "another graph's": another_graphs_entry,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cache_entry_is_ignored_and_rebuilt(damage, tmp_path, caplog):
    # The reproducers: an entry replaced by another graph's optimised model changed the outputs
    # while the bundle still verified; a truncated entry failed every later load (InvalidProtobuf).
    model, cache = tmp_path / "model.onnx", tmp_path / "cache"
    tiny_model(model)
    cached_output(model, cache)
    for entry in cache.iterdir():
        entry.write_bytes(DAMAGE[damage](entry, tmp_path))
    with caplog.at_level(logging.WARNING, logger="mmfast"):
        np.testing.assert_array_equal(cached_output(model, cache), X * 2 + 1)
    assert "ignored" in caplog.text
    rebuilt = {p.name: p.read_bytes() for p in cache.iterdir()}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmfast"):
        np.testing.assert_array_equal(cached_output(model, cache), X * 2 + 1)
    assert caplog.text == ""  # the rebuilt entry is whole: used, not rewritten
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == rebuilt


def test_concurrent_cold_loads_all_succeed(tmp_path):
    # The reproducer: 1 of 32 concurrent first loads failed with "No graph was found" (a
    # reader saw the optimised model half written).
    model = tmp_path / "model.onnx"
    tiny_model(model)
    n = 16
    for attempt in range(6):
        cache = tmp_path / f"cache{attempt}"
        start = threading.Barrier(n)

        def load(_, cache=cache, start=start):
            start.wait()
            return cached_output(model, cache)

        with ThreadPoolExecutor(n) as pool:
            for y in pool.map(load, range(n)):
                np.testing.assert_array_equal(y, X * 2 + 1)
        assert len(list(cache.iterdir())) == 1  # one entry, no temporary file left


def test_the_cache_key_covers_the_onnxruntime_version(tmp_path, monkeypatch):
    import mmfast.session as session_mod

    model, cache = tmp_path / "model.onnx", tmp_path / "cache"
    tiny_model(model)
    cached_output(model, cache)
    monkeypatch.setattr(session_mod.ort, "__version__", "0.0.0")
    cached_output(model, cache)
    assert len(list(cache.iterdir())) == 2  # not the other version's optimisation


def test_a_read_only_bundle_uses_its_cache_or_none(tmp_path, monkeypatch, caplog):
    # A read-only bundle (a container image) with a cache built in: a whole entry is used, a
    # damaged one ignored, and nothing is written. (Simulated for root, who may write anywhere.)
    import mmfast.session as session_mod

    model, cache = tmp_path / "model.onnx", tmp_path / "cache"
    tiny_model(model)
    cached_output(model, cache)
    (entry,) = cache.iterdir()
    whole = entry.read_bytes()
    monkeypatch.setattr(session_mod.os, "access", lambda *args, **kwargs: False)
    for damaged in (False, True):
        entry.write_bytes(whole[:100] if damaged else whole)
        before = entry.read_bytes()
        cache.chmod(0o555)
        try:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="mmfast"):
                np.testing.assert_array_equal(cached_output(model, cache), X * 2 + 1)
        finally:
            cache.chmod(0o755)
        assert ("ignored" in caplog.text) == damaged
        assert [p.name for p in cache.iterdir()] == [entry.name]
        assert entry.read_bytes() == before


@pytest.mark.parametrize("threads", [True, 0, -1, 2.0, 10**6])
def test_session_threads_must_be_a_sane_int(threads, bundle_dir):
    with pytest.raises(ValueError, match="threads"):
        Session(bundle_dir / "model.onnx", threads=threads)
