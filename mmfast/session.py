"""ONNX Runtime sessions as the runtime uses them: device choice with a said-aloud CPU
fallback, deliberate threading, graph optimisation with a reusable optimised model.

Threading: on small machines ORT's intra-op threads spin between runs and fight the Python
decoding loop (measured on the 2-core dev machine: turning spinning off halved beam-search
time of a peer's exported captioner), so spinning is off by default.

The optimised-model cache (``optimized_dir``) holds derived files, trusted no further than
they are checked:

- an entry is named by a key over everything its content depends on: the sha256 of the
  graph's bytes (read once and handed to ORT, so the key is of what ORT optimised), the
  onnxruntime version, the providers, the optimisation level and the CPU (ORT_ENABLE_ALL's
  layout transforms are hardware specific). A replaced graph, whatever its mtime, has
  another key, so the old optimisation is never served for it. (A graph's external data
  file, which mmfast's exporter never writes, is not part of the key);
- an entry starts with its key and the optimised model's sha256 (:func:`_entry_header`): a
  truncated or edited entry, or one copied from another graph, fails the check, is ignored
  with a warning and rebuilt, as is one ORT refuses. Never fatal;
- ORT writes the optimised model to a temporary file of its own, which is renamed into place,
  so concurrent first loads each see a whole entry or none;
- a cache that cannot be written (read-only) is read if whole and otherwise skipped;
- the directory itself must be trusted (:func:`trusted_cache_dir`): a real directory, not a
  symlink, owned by this user, writable by no one else; otherwise the cache is not used. The
  pipelines keep it per user, outside every bundle (:func:`default_cache_dir`): a bundle's
  files are hashed, derived files cannot be, so they must not travel with a bundle (an entry
  shipped inside one would replace its verified graph).

``expected_sha256``: the graph's bytes, read once, are checked against the bundle's record
before ORT parses them (no window between the bundle's check and this read).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import stat
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import _C
from ._checks import positive_int

# Intra-op threads a session may ask for. ONNX Runtime starts them all when it makes the
# session, each slower than the last: on the 2-core dev machine 256 took 3.5 s a graph, 5000
# took 140 s.
MAX_THREADS = 256

__all__ = ["Session", "default_cache_dir", "resolve_providers", "trusted_cache_dir"]

log = logging.getLogger("mmfast")

_OPTIMIZATION = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

_CACHE_FORMAT = "mmfast ORT optimised model, format 1"


def resolve_providers(device: str) -> list[str]:
    """ORT providers for `device` ("cpu" or "cuda"); CUDA falls back to CPU with a warning."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    log.warning(
        "device='cuda' asked for, but this onnxruntime has no CUDAExecutionProvider "
        "(available: %s); running on CPU. Install the gpu extra (onnxruntime-gpu).",
        ", ".join(available),
    )
    return ["CPUExecutionProvider"]


def default_cache_dir() -> Path:
    """Where the pipelines keep ONNX Runtime's optimised models: ``$MMFAST_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/mmfast/ort``, else ``~/.cache/mmfast/ort``. Entries are keyed by the
    graph's content, so bundles share it safely; delete it at any time."""
    if env := os.environ.get("MMFAST_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmfast" / "ort"


def trusted_cache_dir(path: Path) -> bool:
    """Create `path` (mode 0700) if it is missing; True if it is a real directory (not a
    symlink) owned by this user that no one else may write: only then are its entries read."""
    return _untrusted_because(path) is None


def _untrusted_because(path: Path) -> str | None:
    """Why the cache directory `path` may not be used (creating it if missing); None if it
    may."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError as e:
        return f"cannot be created or read ({e.strerror or e})"
    private = "not a private directory of this user"
    if not stat.S_ISDIR(st.st_mode):  # a symlink's lstat is not a directory
        return f"{private} (a symlink, or not a directory)"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"{private} (owned by another user)"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{private} (writable by others)"
    return None


def _cache_key(graph_sha256: str, providers: Sequence[str]) -> str:
    """What an optimised model depends on, hashed: the graph (by its sha256), ORT, providers,
    level, CPU."""
    facts = {
        "format": _CACHE_FORMAT,
        "graph_sha256": graph_sha256,
        "onnxruntime": ort.__version__,
        "providers": list(providers),
        "graph_optimization_level": str(_OPTIMIZATION),
        "machine": platform.machine(),
        "cpu_features": sorted(k for k, v in _C.cpu_features().items() if v),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _entry_header(key: str, model: bytes) -> bytes:
    """A cache entry is this header, then the model."""
    return f"{_CACHE_FORMAT}\nkey {key}\nsha256 {hashlib.sha256(model).hexdigest()}\n".encode()


def _read_entry(entry: Path, key: str) -> bytes | None:
    """The optimised model cached at `entry` for `key`; None (with a warning, unless there is
    none) when it cannot be read, was built for another key or fails its sha256."""
    try:
        blob = entry.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("optimised-model cache %s: unreadable (%s); ignored", entry, e.strerror)
        return None
    n = len(_entry_header(key, b""))  # the header's length does not depend on the model
    model = blob[n:]
    if blob[:n] != _entry_header(key, model):
        log.warning("optimised-model cache %s: truncated or modified; ignored", entry)
        return None
    return model


def _write_entry(entry: Path, key: str, written: Path) -> None:
    """Store the optimised model ORT wrote to `written` (a temporary file next to `entry`) as
    the cache entry `entry` for `key`, atomically. A failure is logged, never raised."""
    try:
        model = written.read_bytes()
        written.write_bytes(_entry_header(key, model) + model)
        os.replace(written, entry)  # atomic: readers see the old entry, none, or this one
    except OSError as e:
        log.warning("optimised-model cache %s: not saved (%s)", entry, e.strerror)


class Session:
    """One ONNX graph, ready to run. Thread-safe: ORT sessions may be run concurrently.

    model: path of the .onnx file. threads: intra-op threads (None: ORT's default, all cores).
    optimized_dir: if given, the graph optimised for this machine is saved there on first load
    and reused afterwards (skips optimisation at start-up); an entry that fails its check is
    ignored and rebuilt, an unwritable directory skipped (see the module docstring).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        threads: int | None = None,
        optimized_dir: str | Path | None = None,
        spinning: bool = False,
        expected_sha256: str | None = None,
    ) -> None:
        if threads is not None:
            threads = positive_int("threads", threads, at_most=MAX_THREADS)
        self.path = Path(model)
        self.providers = resolve_providers(device)
        self._threads, self._spinning = threads, spinning
        source = self.path.read_bytes()  # read once: what is checked is what ORT parses
        digest = None  # the graph is hashed at most once: checked here, and keys the cache
        if expected_sha256 is not None:
            digest = hashlib.sha256(source).hexdigest()
            if digest != expected_sha256:
                from .bundle import BundleCorruptError

                raise BundleCorruptError(
                    f"{self.path}: does not match the sha256 recorded at export (changed since "
                    "the bundle was checked)"
                )
        if optimized_dir is None:
            self._sess = self._session(source, optimize=True)
        else:
            digest = digest or hashlib.sha256(source).hexdigest()
            self._sess = self._cached_session(Path(optimized_dir), source, digest)
        self.device = "cuda" if self._sess.get_providers()[0].startswith("CUDA") else "cpu"
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def _session(self, model: str | bytes, *, optimize: bool, save_to: Path | None = None) -> Any:
        """An ORT session of `model` (a path, or the graph's bytes); `optimize`: ORT's full
        graph optimisation (off for a model the cache already holds optimised); `save_to`:
        where ORT writes the optimised model."""
        so = ort.SessionOptions()
        if self._threads is not None:
            so.intra_op_num_threads = self._threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self._spinning else "0"
        )
        # a graph given as bytes finds external data (if any) next to its file, as from a path
        so.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(self.path.parent)
        )
        # Failures come back as exceptions (the pipelines name the graph); ORT's own error log
        # line on stderr would only duplicate them, before the CLI's one-line message.
        so.log_severity_level = 4
        so.graph_optimization_level = (
            _OPTIMIZATION if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        if save_to is not None:
            so.optimized_model_filepath = str(save_to)
        return ort.InferenceSession(model, so, providers=self.providers)

    def _cached_session(self, cache: Path, source: bytes, source_sha256: str) -> Any:
        """A session built from the cache's entry for this graph (`source`, whose sha256 is
        `source_sha256`), or from the graph, saving the optimised model as the entry (see the
        module docstring)."""
        if problem := _untrusted_because(cache):
            log.warning("optimised-model cache %s: %s; not used", cache, problem)
            return self._session(source, optimize=True)
        key = _cache_key(source_sha256, self.providers)
        entry = cache / f"{self.path.stem}.{key[:32]}.opt"
        optimized = _read_entry(entry, key)
        if optimized is not None:
            try:
                return self._session(optimized, optimize=False)
            except Exception as e:  # ORT's errors derive from Exception only
                log.warning("optimised-model cache %s: refused by ORT (%s); ignored", entry, e)
        if not os.access(cache, os.W_OK):
            return self._session(source, optimize=True)  # read-only: no new entries
        written = cache / f".{entry.name}.{uuid.uuid4().hex}.tmp"  # one per writer
        try:
            sess = self._session(source, optimize=True, save_to=written)
        except Exception:
            # the graph's own error, or ORT failed to write (a full disk): try without saving
            sess = self._session(source, optimize=True)
            log.warning("optimised-model cache %s: ORT could not write it", entry)
        else:
            _write_entry(entry, key, written)
        finally:
            written.unlink(missing_ok=True)
        return sess

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> list[np.ndarray]:
        """Run with numpy inputs; returns the outputs (all, or those named) as numpy arrays."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"feeds: missing input(s) {missing} for {self.path.name}")
        result: list[np.ndarray] = self._sess.run(list(outputs or self.output_names), dict(feeds))
        return result

    @property
    def inner(self) -> Any:
        """The underlying onnxruntime.InferenceSession (for IO binding)."""
        return self._sess
