"""An index directory on disk: atomic saves, ``index.json`` (the manifest) and ``ids.json``.

Layout (format 2; format 1, the first exact index, is still read)::

    index.json   {"format": 2, "backend": "exact" | "hnsw" | "ivfpq", "dim": d,
                  "count": live ids, "labels": ids.json's length, "params": {...},
                  "files": {name: {"bytes": n, "sha256": hex}} (the FAISS files),
                  "metadata": {...} (free-form: the model that made the embeddings)}
    ids.json     the id of every label (row) in insertion order; null where an id was removed
                 but the backend keeps its row until the next compaction (HNSW, IVF-PQ)
    embeddings.npy / index.faiss   the backend's vectors

No pickle anywhere. A save writes a sibling temporary directory, then swaps it in with one
rename, so a crash leaves the old index or the new one, never a mix of the two.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

__all__ = [
    "INDEX_FORMAT",
    "Manifest",
    "atomic_directory",
    "file_record",
    "read_ids",
    "read_manifest",
    "write_json",
]

INDEX_FORMAT = 2
MANIFEST, IDS, EMBEDDINGS, FAISS_FILE = "index.json", "ids.json", "embeddings.npy", "index.faiss"
INDEX_FILES = (MANIFEST, IDS, EMBEDDINGS, FAISS_FILE)  # what a save replaces; others are kept
BACKENDS = ("exact", "hnsw", "ivfpq")
_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically (renameat2, Linux >= 3.15)
_AT_FDCWD = -100


@dataclass
class Manifest:
    """What index.json says, checked for types (not yet against the other files)."""

    format: int
    backend: str
    dim: int
    count: int | None  # live ids; None in a format-1 file that omitted it
    labels: int | None  # ids.json's length (live + removed rows); None in format 1
    params: dict[str, Any] = field(default_factory=dict)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def corrupt(directory: Path, what: str) -> ValueError:
    return ValueError(f"{directory}: corrupt index ({what})")


def _read_json(directory: Path, name: str) -> Any:
    try:
        return json.loads((directory / name).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ValueError(f"{directory}: not an index directory ({e.filename} missing)") from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError are ValueErrors
        raise corrupt(directory, f"{name}: {e}") from e
    except RecursionError:
        raise corrupt(directory, f"{name}: JSON nested too deeply") from None


def _int(value: object) -> TypeGuard[int]:
    return type(value) is int


def read_manifest(directory: str | Path) -> Manifest:
    """index.json of `directory`; ValueError naming the directory if it is not an index, is a
    newer format or has fields of the wrong type; OSError if it cannot be read."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"{d}: not an index directory (no such directory)")
    meta = _read_json(d, MANIFEST)
    if not isinstance(meta, dict):
        raise corrupt(d, "index.json is not an object")
    version, dim = meta.get("format"), meta.get("dim")
    if not _int(version) or not _int(dim) or dim < 1 or version < 1:
        raise corrupt(d, "index.json needs an int format and dim")
    if version > INDEX_FORMAT:
        raise ValueError(f"{d}: index format {version} is newer than this mmfast")
    count = meta.get("count")
    if count is not None and (not _int(count) or count < 0):
        raise corrupt(d, f"index.json count {count!r} is not a count")
    if version == 1:  # the first exact index: metadata at the top level, no backend
        extra = {k: v for k, v in meta.items() if k not in ("format", "dim", "count")}
        return Manifest(version, "exact", dim, count, None, metadata=extra)
    backend, labels = meta.get("backend"), meta.get("labels")
    if backend not in BACKENDS:
        raise corrupt(d, f"index.json backend {backend!r} is none of {', '.join(BACKENDS)}")
    if count is None or not _int(labels) or labels < count:
        raise corrupt(d, "index.json needs int count and labels, labels >= count")
    params, files, metadata = (meta.get(k, {}) for k in ("params", "files", "metadata"))
    if not all(isinstance(x, dict) for x in (params, files, metadata)):
        raise corrupt(d, "index.json params, files and metadata must be objects")
    for name, rec in files.items():
        ok = isinstance(rec, dict) and _int(rec.get("bytes")) and isinstance(rec.get("sha256"), str)
        if not ok or "/" in name or name.startswith("."):
            raise corrupt(d, f"index.json files[{name!r}] needs bytes and sha256")
    return Manifest(version, backend, dim, count, labels, params, files, metadata)


def read_ids(directory: Path, manifest: Manifest, *, tombstones: bool) -> list[str | None]:
    """ids.json checked against the manifest: strings (null for a removed row if the backend
    keeps `tombstones`), no repeats, as many as the manifest says."""
    ids = _read_json(directory, IDS)
    ok = (str, type(None)) if tombstones else str
    if not isinstance(ids, list) or not all(isinstance(i, ok) for i in ids):
        raise corrupt(directory, "ids.json is not a list of strings")
    live = [i for i in ids if i is not None]
    if len(set(live)) != len(live):
        raise corrupt(directory, "ids.json repeats an id")
    if manifest.count is not None and manifest.count != len(live):
        raise corrupt(directory, f"{manifest.count} in index.json, {len(live)} ids")
    if manifest.labels is not None and manifest.labels != len(ids):
        raise corrupt(directory, f"{manifest.labels} labels in index.json, {len(ids)} in ids.json")
    return ids


def write_json(path: Path, value: object) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1 if isinstance(value, dict) else None)
        f.flush()
        os.fsync(f.fileno())


def file_record(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, streamed (1 MiB at a time): ~1.5 GB/s."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _fsync_tree(root: Path) -> None:
    for p in root.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)  # the directory's entries
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2); False where unsupported."""
    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or filesystem
        return False
    raise OSError(err, os.strerror(err), str(a))


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory next to `target`; when the block succeeds, make it
    `target` atomically. `target` must be absent, empty or an index directory; files there that
    are not the index's (INDEX_FILES), e.g. the retriever's regions.npy, are kept (hard links)."""
    target = Path(target)
    # as a plain mkdir would: OSError for a path under a file, or for an existing file
    target.mkdir(parents=True, exist_ok=True)
    if any(target.iterdir()) and not (target / MANIFEST).is_file():
        raise ValueError(f"{target}: not empty and not an index directory; refusing to replace")
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
        for p in target.iterdir():
            if p.name not in INDEX_FILES and p.is_file():
                try:
                    os.link(p, tmp / p.name)
                except OSError:  # another filesystem's rules: copy instead
                    shutil.copy2(p, tmp / p.name)
        _fsync_tree(tmp)
        if not _exchange(tmp, target):
            # no atomic swap here: two renames, and a crash between them leaves `target`
            # missing with the old index in .<name>.old-*
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(target, old)
            os.rename(tmp, target)
            tmp = old
    finally:
        # after a swap, tmp holds the old index: files memory-mapped from it stay readable
        # (the inodes live while mapped)
        shutil.rmtree(tmp, ignore_errors=True)
