"""The bundle: the directory an export writes and the runtime loads (torch-free).

Layout::

    BUNDLE/
      manifest.json     format_version, task, config, opset, graphs (file, inputs, outputs with
                        names / shapes / dtypes), preprocessing, vocabulary, files (sha256 of
                        every other file), validation report, provenance
      *.onnx, vocab.txt, ...

Loading checks everything before any session is built and raises a :class:`BundleError`
subclass naming the problem: missing or unreadable manifest, a format newer than this runtime,
a missing file, a file whose sha256 differs (corrupt or edited), a missing required key.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleCorruptError",
    "BundleError",
    "BundleFormatError",
    "BundleMissingFileError",
    "load_bundle",
    "sha256_file",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_REQUIRED_KEYS = ("format_version", "task", "files")


class BundleError(ValueError):
    """A bundle cannot be used."""


class BundleFormatError(BundleError):
    """The manifest is missing, unreadable, lacks required keys or is from a newer format."""


class BundleMissingFileError(BundleError):
    """A file the manifest lists is not in the bundle."""


class BundleCorruptError(BundleError):
    """A file's sha256 differs from the one recorded at export."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory and manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    def file(self, name: str) -> Path:
        """Path of a file listed in the manifest (BundleMissingFileError if it is not listed)."""
        if name not in self.manifest["files"]:
            raise BundleMissingFileError(f"{self.path}: the manifest lists no file {name!r}")
        return self.path / name


def write_manifest(bundle_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json for `bundle_dir`, recording the sha256 of every other file in it.

    `manifest` holds everything but ``format_version`` and ``files``, which this fills in.
    """
    root = Path(bundle_dir)
    files = {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    full = {"format_version": FORMAT_VERSION, **manifest, "files": files}
    out = root / MANIFEST
    out.write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return out


def load_bundle(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle directory; see the module docstring for what is checked."""
    root = Path(path)
    if not root.is_dir():
        raise BundleFormatError(f"{root}: not a bundle directory (it does not exist)")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleFormatError(f"{root}: no {MANIFEST} (not an mmfast bundle?)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleFormatError(f"{mpath}: unreadable manifest ({e})") from e
    if not isinstance(manifest, dict):
        raise BundleFormatError(f"{mpath}: the manifest is not a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleFormatError(f"{mpath}: missing required key(s) {missing}")
    version = manifest["format_version"]
    if not isinstance(version, int) or version < 1:
        raise BundleFormatError(f"{mpath}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise BundleFormatError(
            f"{mpath}: bundle format {version} is newer than this mmfast supports "
            f"({FORMAT_VERSION}); upgrade mmfast to load it"
        )
    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleFormatError(f"{mpath}: 'files' must map file names to sha256")
    for name, digest in files.items():
        fpath = root / name
        if not fpath.is_file():
            raise BundleMissingFileError(f"{root}: {name} is listed in the manifest but missing")
        if verify_hashes and sha256_file(fpath) != digest:
            raise BundleCorruptError(
                f"{root}: {name} does not match the sha256 recorded at export (corrupt or modified)"
            )
    return Bundle(path=root, manifest=manifest)
