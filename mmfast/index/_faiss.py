"""Everything the FAISS backends share: the lazy import, OpenMP threads, and reading a saved
FAISS file without ever handing faiss a file it could crash on.

faiss trusts its files (a corrupt HNSW neighbour list is an out-of-bounds read at search time),
so a file is checked before faiss sees it: its size and SHA-256 against index.json (which
catches truncation and garbage; it guards against corruption, not tampering), then its first
four bytes (the index type's fourcc), and after reading, faiss's d and ntotal against
index.json.

Memory-mapping in faiss 1.15.1, measured (RSS growth of read_index on 400k x 64 files, HNSW 50k
x 64; then add on the result): ``IO_FLAG_MMAP_IFC`` ("in-place flat codes") maps, zero-copy, the
vectors of IndexFlat (+0 MB instead of +98), the storage of IndexHNSWFlat (the graph is read
into memory: +4 MB instead of +16) and the inverted lists of IndexIVFFlat / IndexIVFPQ (+0-2
MB). The older ``IO_FLAG_MMAP`` reads Flat and HNSW wholly into memory and maps only IVF lists,
as read-only OnDiskInvertedLists that cannot even be cloned or serialised. Either kind of mapped
index can *abort the process* on add or remove (a failed FAISS_ASSERT on a viewed vector, or an
exception thrown inside an OpenMP region). So we map with ``IO_FLAG_MMAP_IFC |
IO_FLAG_READ_ONLY`` and, before the first change, make an owned in-memory copy (serialise +
deserialise), see :func:`owned`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from ._files import Manifest, file_record

__all__ = ["FOURCC", "faiss", "owned", "read_checked", "threads", "write_recorded"]

# The fourcc faiss writes first for each index class we save (faiss/impl/index_write.cpp).
FOURCC = {"IndexHNSWFlat": b"IHNf", "IndexIVFPQ": b"IwPQ"}


def faiss() -> ModuleType:
    """The faiss module, imported on first use so that ``import mmfast`` never loads it."""
    try:
        return importlib.import_module("faiss")
    except ImportError as e:
        raise ImportError(
            "the hnsw and ivfpq index backends need faiss: pip install 'mmfast[index]' "
            "(or pip install faiss-cpu); the exact backend needs nothing more"
        ) from e


@contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run faiss calls on `n` OpenMP threads (None: faiss's default, all cores). OpenMP's
    setting is per process, so it is restored afterwards; Python threads searching at once
    with different settings may see each other's (faiss releases the GIL)."""
    if n is None:
        yield
        return
    f = faiss()
    old = f.omp_get_max_threads()
    f.omp_set_num_threads(n)
    try:
        yield
    finally:
        f.omp_set_num_threads(old)


def write_recorded(index: Any, path: Path) -> dict[str, Any]:
    """faiss.write_index, then the file's size and SHA-256 for index.json."""
    faiss().write_index(index, os.fspath(path))
    return file_record(path)


def read_checked(
    directory: Path, name: str, manifest: Manifest, cls: str, ntotal: int | None, *, mmap: bool
) -> Any:
    """The faiss index `name` in `directory`, checked (see the module docstring) to be a `cls`
    of manifest.dim with `ntotal` vectors (None: the caller checks). ValueError naming the
    directory otherwise."""
    path = directory / name
    rec = manifest.files.get(name)
    if rec is None:
        raise ValueError(f"{directory}: corrupt index (index.json records no {name})")
    if not path.is_file():
        raise ValueError(f"{directory}: not an index directory ({path} missing)")
    size = path.stat().st_size
    if size != rec["bytes"]:
        raise ValueError(
            f"{directory}: corrupt index ({name} is {size} bytes, index.json says "
            f"{rec['bytes']}: truncated or replaced)"
        )
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != FOURCC[cls]:
        raise ValueError(f"{directory}: corrupt index ({name} is not a faiss {cls}: {head!r})")
    if file_record(path)["sha256"] != rec["sha256"]:
        raise ValueError(f"{directory}: corrupt index ({name} does not match its SHA-256)")
    f = faiss()
    flags = f.IO_FLAG_MMAP_IFC | f.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = f.read_index(os.fspath(path), flags)
    except (RuntimeError, MemoryError) as e:  # faiss's own checks; a header asking for TBs
        raise ValueError(f"{directory}: corrupt index ({name}: {e})") from e
    want = index.ntotal if ntotal is None else ntotal
    if type(index).__name__ != cls or index.d != manifest.dim or index.ntotal != want:
        raise ValueError(
            f"{directory}: corrupt index ({name} is a {type(index).__name__} of "
            f"{index.ntotal} x {index.d}, index.json says {cls} of {want} x {manifest.dim})"
        )
    return index


def owned(index: Any) -> Any:
    """An in-memory copy of a memory-mapped index that add/remove may change (see the module
    docstring): a serialised copy, so it costs the index's size once, at the first change."""
    f = faiss()
    return f.deserialize_index(f.serialize_index(index))
