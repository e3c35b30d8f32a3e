"""The bundle: the directory an export writes and the runtime loads (torch-free).

Layout::

    BUNDLE/
      manifest.json     format_version, task, kind, config, opset, graphs (file -> input and
                        output names, dynamic axes, tolerances), preprocessing, vocabulary,
                        special tokens, the task's sections, files (sha256 of every other
                        file), validation report, provenance
      *.onnx, vocab.txt, ...

The manifest is read once, into a typed :class:`Manifest`; its dataclasses are the schema.
Loading checks everything before any session is built and raises a :class:`BundleError`
subclass naming the problem: missing or unreadable manifest, a format newer than this runtime,
a missing, unknown or mistyped key (named with its path, e.g. ``decoder.state_updates``), a
file the manifest names but does not list, a file name that could leave the bundle (absolute,
``..``, not a normalised relative POSIX path), a file that resolves outside the bundle once
symlinks are followed or is not a regular file, a missing file, a file whose sha256 differs
(corrupt or edited). :func:`write_manifest` runs the same checks before it writes.

The trust model (README, "Bundle trust model"): every file the manifest names is a regular file
inside the bundle directory, and its sha256 is checked before anything parses it. A symlink is
allowed when it resolves to a regular file inside the bundle (its bytes are the bundle's and are
hashed like any other); one leaving the bundle is refused with the same error whether or not its
target exists, and no message says where a link leads or quotes a file other than the manifest.
Derived files (ONNX Runtime's optimised graphs, :mod:`mmfast.session`) live in a per-user
cache outside every bundle, and are checked on their own.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
from collections.abc import Collection, Mapping
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import cache
from pathlib import Path, PureWindowsPath
from typing import Any, get_args, get_origin, get_type_hints

from .generation import GenerationConfig
from .preprocess import PreprocessConfig
from .tokenizer import SpecialTokens

__all__ = [
    "FORMAT_VERSION",
    "TASK_SECTIONS",
    "Bundle",
    "BundleCorruptError",
    "BundleError",
    "BundleFormatError",
    "BundleGraphError",
    "BundleMismatchError",
    "BundleMissingFileError",
    "DecoderSection",
    "GraphSection",
    "Manifest",
    "RerankSection",
    "RetrievalSection",
    "TokenizerSection",
    "VQASection",
    "load_bundle",
    "sha256_file",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Where earlier versions kept ONNX Runtime's optimised graphs, inside the bundle. Never read
# now (mmfast.session); write_manifest leaves it out of a bundle that still has one.
_LEGACY_CACHE_DIR = ".ort-cache"


class BundleError(ValueError):
    """A bundle cannot be used."""


class BundleFormatError(BundleError):
    """The manifest is missing, unreadable, from a newer format, or breaks the schema (a missing,
    unknown or mistyped key); or a file it lists is not a regular file inside the bundle."""


class BundleMissingFileError(BundleError):
    """A file the manifest lists is not in the bundle."""


class BundleCorruptError(BundleError):
    """A file's sha256 differs from the one recorded at export."""


class BundleGraphError(BundleError):
    """ONNX Runtime cannot load or run one of the bundle's graphs (a corrupt, truncated or
    foreign .onnx file); the message names the file and keeps ONNX Runtime's reason."""


class BundleMismatchError(BundleError):
    """The bundle's files disagree: a graph lacks an input or output the pipeline uses, or one of
    its fixed sizes differs from the preprocessing's, the vocabulary's or the answers'."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class GraphSection:
    """``graphs[FILE]``: one exported ONNX graph."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[str, str]]  # input -> {axis: symbolic dim}, e.g. {"0": "batch"}
    atol: float  # the tolerances it was validated to against PyTorch
    rtol: float
    notes: str = ""  # absent from bundles exported before the export wrote it


@dataclass(frozen=True)
class DecoderSection:
    """``decoder``: how the step graph carries its state (caption)."""

    state_updates: dict[str, str]  # step input -> the step output replacing it after a step
    max_len: int | None  # tokens the model decodes at most (a KV cache's length); null: no limit

    def __post_init__(self) -> None:
        if self.max_len is not None:
            _check_token_limit(self.max_len)


@dataclass(frozen=True)
class TokenizerSection:
    """``tokenizer``: a Hugging Face ``tokenizer.json`` vocabulary (absent: word-level)."""

    clean_up_tokenization_spaces: bool  # the model's tokenizer cleans up spaces when decoding


@dataclass(frozen=True)
class RetrievalSection:
    """``retrieval``: the towers' embeddings are compared by cosine.

    Own models: fused re-ranking score = logit_scale * cosine + re-ranker score. Zero-shot
    classification (every model): logits = logit_scale * cosine + logit_bias, turned into
    probabilities by ``activation`` (CLIP: softmax over the labels; SigLIP: a sigmoid each).
    """

    logit_scale: float
    rerank: bool  # the bundle has reranker.onnx
    max_len: int  # text tokens the text tower takes at most
    logit_bias: float = 0.0
    activation: str = "softmax"  # "softmax" or "sigmoid"
    # pad every text to max_len (a model trained on padded texts that pools the last token,
    # SigLIP's); false: pad a batch to its longest text
    pad_to_max_len: bool = False

    def __post_init__(self) -> None:
        # json reads 1e999 as inf (NaN/Infinity are refused as not JSON): every fused score NaN
        for name in ("logit_scale", "logit_bias"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, got {self.activation!r}")
        _check_token_limit(self.max_len)


@dataclass(frozen=True)
class RerankSection:
    """``rerank``: a stand-alone re-ranker (an image-text matching model, BLIP's ITM head),
    attachable to any retriever: image_encoder.onnx gives each image's features once,
    itm.onnx scores (text, image features) pairs; score = P(match) in [0, 1]."""

    max_len: int  # text tokens the matching model takes at most

    def __post_init__(self) -> None:
        _check_token_limit(self.max_len)


@dataclass(frozen=True)
class VQASection:
    """``vqa``: a classifier over a fixed answer list (``answers``, the logits' classes), or a
    generative model whose answer decoder writes the answer (``generative``; it then has
    ``decoder`` and ``generation`` sections, as a captioner, and no answer list)."""

    max_len: int  # question tokens the model takes at most
    # a classifier's answer scores from its logits: "softmax" (one answer per question, mmfast's
    # own models) or "sigmoid" (each answer scored alone, as ViLT was trained: VQA soft scores)
    activation: str = "softmax"
    generative: bool = False

    def __post_init__(self) -> None:
        _check_token_limit(self.max_len)
        if self.activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be softmax or sigmoid, got {self.activation!r}")


def _check_token_limit(max_len: int) -> None:
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")


# The sections each task's pipeline reads besides those every bundle has.
TASK_SECTIONS: dict[str, tuple[str, ...]] = {
    "caption": ("kind", "decoder"),
    "retrieval": ("retrieval",),
    "vqa": ("vqa",),  # and "answers" unless vqa.generative (Manifest.__post_init__)
    "rerank": ("rerank",),
}


class _Invalid(ValueError):
    """A value that breaks the schema; the message names the key by its path."""


@dataclass(frozen=True)
class Manifest:
    """``manifest.json``, format version 1, as ``mmfast_export.onnx_export.export_run`` writes
    it. Build it with :meth:`from_dict`, which checks every key and type."""

    format_version: int
    task: str  # a key of TASK_SECTIONS
    config: dict[str, Any]  # the model's configuration (free-form)
    opset: int
    graphs: dict[str, GraphSection]  # file -> its graph
    preprocess: PreprocessConfig
    vocab: str  # the vocabulary file
    special_tokens: SpecialTokens  # the vocabulary's ids of <pad>, <bos>, <eos>, <unk>
    validation: dict[str, Any]  # the export's report: graph -> case -> output -> errors
    provenance: dict[str, Any]  # run, git commit, training arguments, metrics, versions
    files: dict[str, str]  # file -> sha256, every file of the bundle but the manifest
    kind: str | None = None  # model kind, e.g. "caption_lstm" (caption: required)
    decoder: DecoderSection | None = None  # caption: required
    retrieval: RetrievalSection | None = None  # retrieval: required
    rerank: RerankSection | None = None  # rerank: required
    vqa: VQASection | None = None  # vqa: required
    answers: str | None = None  # the answers file, one a line (a vqa classifier: required)
    tokenizer: TokenizerSection | None = None  # vocab is a tokenizer.json (Hugging Face)
    # decode as transformers' generate() does (Hugging Face captioners); absent: mmfast's own
    generation: GenerationConfig | None = None

    def __post_init__(self) -> None:
        if self.task not in TASK_SECTIONS:
            known = ", ".join(TASK_SECTIONS)
            raise _Invalid(f"'task' must be one of {known}, got {self.task!r}")
        for name in TASK_SECTIONS[self.task]:
            if getattr(self, name) is None:
                raise _Invalid(f"missing required key {name!r} (a {self.task} bundle needs it)")
        if self.task == "vqa":
            assert self.vqa is not None  # checked just above
            needs = ("decoder", "generation") if self.vqa.generative else ("answers",)
            what = "generative" if self.vqa.generative else "classifier"
            for name in needs:
                if getattr(self, name) is None:
                    raise _Invalid(f"missing required key {name!r} (a vqa {what} bundle needs it)")
        named: dict[str, str | None] = {"vocab": self.vocab, "answers": self.answers}
        named.update({f"graphs[{g}]": g for g in self.graphs})
        named.update({f"files[{f}]": f for f in self.files})
        for key, file in named.items():
            if file is None:
                continue
            if problem := _not_inside(file):
                raise _Invalid(f"{key!r} names {file!r}, {problem}")
            if file not in self.files:
                raise _Invalid(f"{key!r} names {file!r}, which 'files' does not list")

    @classmethod
    def from_dict(cls, data: object, source: str | Path = MANIFEST) -> Manifest:
        """A manifest's JSON (parsed) -> Manifest; BundleFormatError naming `source` and the
        first missing, unknown or mistyped key, or a format newer than this runtime reads."""
        try:
            if not isinstance(data, dict):
                raise _Invalid("the manifest is not a JSON object")
            if "format_version" not in data:
                raise _Invalid("missing required key 'format_version'")
            version = data["format_version"]
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise _Invalid(f"invalid format_version {version!r}")
            if version > FORMAT_VERSION:
                raise _Invalid(
                    f"bundle format {version} is newer than this mmfast supports "
                    f"({FORMAT_VERSION}); upgrade mmfast to load it"
                )
            manifest: Manifest = _parse_section(cls, data, "")
        except _Invalid as e:
            raise BundleFormatError(f"{source}: {e}") from None
        return manifest


def _not_inside(name: str) -> str | None:
    """Why `name` is not a normalised relative POSIX path that stays inside the bundle (read
    lexically: symlinks are load_bundle's), or None if it is."""
    parts = name.split("/")
    if name.startswith("/") or PureWindowsPath(name).anchor:  # "/x", "C:x", "\\x", "//host/x"
        return "an absolute path (a bundle's files are relative paths inside it)"
    if ".." in parts:
        return "which leaves the bundle ('..')"
    if "\\" in name or "\0" in name or any(p in ("", ".") for p in parts):
        return "which is not a normalised relative POSIX path ('a/b.onnx')"
    return None


# ------------------------------------------------------------------------------ the parser


# PreprocessConfig keys added after format 1 (its Hugging Face path): optional in a manifest,
# where a missing one takes its default, what every bundle written before it meant.
_PREPROCESS_ADDED = frozenset({"resize", "rescale", "resize_mode", "size_divisor"})


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _json_type(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "an object", type(None): "null"}
    text = repr(value)
    return f"{names.get(type(value), type(value).__name__)} {text[:60]}{'...' * (len(text) > 60)}"


def _expected(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is tuple:
        return "a list"
    if origin is dict or is_dataclass(tp):
        return "an object"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[tp]


def _parse(tp: Any, value: object, path: str) -> Any:
    """A JSON value checked against the type `tp` (and converted: lists -> tuples, sections ->
    their dataclasses); _Invalid naming `path` if it does not fit."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin is types.UnionType:  # X | None: null, or what X takes; X | Y: the first that fits
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for inner in options[:-1]:
            try:
                return _parse(inner, value, path)
            except _Invalid:
                pass
        return _parse(options[-1], value, path)
    if is_dataclass(tp) and isinstance(value, dict):
        # PreprocessConfig has defaults for training's sake; a bundle spells out every key but
        # those added after format 1 (older bundles lack them and mean their defaults)
        if tp is PreprocessConfig:
            required = {f.name for f in fields(tp)} - _PREPROCESS_ADDED
            return _parse_section(tp, value, path, required=required)
        return _parse_section(tp, value, path)
    if origin is dict and isinstance(value, dict):
        return {k: _parse(args[1], v, f"{path}[{k}]") for k, v in value.items()}
    if origin is tuple and isinstance(value, list):  # tuple[X, ...]
        return tuple(_parse(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (bool, str) and isinstance(value, tp):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _Invalid(f"{path!r} must be {_expected(tp)}, got {_json_type(value)}")


def _parse_section(
    cls: Any, value: Mapping[str, Any], path: str, required: Collection[str] = ()
) -> Any:
    """A JSON object -> the dataclass `cls`: every field's key is required unless the field
    has a default (and is not in `required`), and no other key is allowed."""
    names = {f.name for f in fields(cls)}
    for key in value:
        if key not in names:
            raise _Invalid(f"unknown key {_join(path, key)!r}")
    kwargs = {}
    for f in fields(cls):
        if f.name in value:
            kwargs[f.name] = _parse(_hints(cls)[f.name], value[f.name], _join(path, f.name))
        elif f.name in required or (f.default is MISSING and f.default_factory is MISSING):
            raise _Invalid(f"missing required key {_join(path, f.name)!r}")
    try:
        return cls(**kwargs)
    except _Invalid:
        raise
    except ValueError as e:  # the section's own checks
        raise _Invalid(f"{path!r}: {e}") from None


# ---------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory and manifest."""

    path: Path
    manifest: Manifest

    @property
    def task(self) -> str:
        return self.manifest.task

    def file(self, name: str) -> Path:
        """Path of a file listed in the manifest (BundleMissingFileError if it is not listed)."""
        if name not in self.manifest.files:
            raise BundleMissingFileError(f"{self.path}: the manifest lists no file {name!r}")
        return self.path / name


def write_manifest(bundle_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json for `bundle_dir`, recording the sha256 of every other file in it.

    `manifest` holds everything but ``format_version`` and ``files``, which this fills in
    (an ``.ort-cache/`` directory, where earlier versions kept derived files, is left out).
    What would be written is first read back through :meth:`Manifest.from_dict`, so a
    manifest :func:`load_bundle` would refuse is never written (BundleFormatError).
    """
    root = Path(bundle_dir)
    base = _real(root, ".")
    files = {}
    for p in sorted(root.rglob("*")):
        name = p.relative_to(root).as_posix()
        if p.is_file() and p.name != MANIFEST and not name.startswith(f"{_LEGACY_CACHE_DIR}/"):
            _check_inside(root, base, name)
            files[name] = sha256_file(p)
    full = {"format_version": FORMAT_VERSION, **manifest, "files": files}
    out = root / MANIFEST
    try:  # NaN / Infinity are not JSON: load_bundle would refuse them
        text = json.dumps(full, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as e:
        raise BundleFormatError(f"{out}: {e} (NaN or infinity in the manifest)") from None
    Manifest.from_dict(json.loads(text), out)
    out.write_text(text)
    return out


def _real(root: Path, name: str) -> Path:
    """root/name with every symlink followed (as far as the path exists)."""
    try:
        return (root / name).resolve()
    except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13)
        raise BundleFormatError(f"{root}: {name} cannot be resolved (a symlink loop)") from None


def _check_inside(root: Path, base: Path, name: str) -> None:
    """BundleFormatError unless root/name, symlinks followed, lies inside `base` (root's real
    path). The same error whether or not a link's target exists, and never where it leads."""
    if not _real(root, name).is_relative_to(base):
        raise BundleFormatError(
            f"{root}: {name} resolves outside the bundle (a symlink leaving it)"
        )


def _no_constant(name: str) -> Any:
    """json's NaN / Infinity / -Infinity are not JSON, and no manifest value may be one."""
    raise ValueError(f"{name} is not a JSON value")


def load_bundle(path: str | Path, *, verify_hashes: bool = True) -> Bundle:
    """Read and check a bundle directory; see the module docstring for what is checked.

    Every file is checked (inside the bundle, a regular file, its sha256) before this returns,
    so before anything parses it; the pipelines open the files by path afterwards (a bundle
    directory that someone else can write while it is in use is outside the trust model).
    """
    root = Path(path)
    if not root.is_dir():
        raise BundleFormatError(f"{root}: not a bundle directory (it does not exist)")
    base = _real(root, ".")
    _check_inside(root, base, MANIFEST)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleFormatError(f"{root}: no {MANIFEST} (not an mmfast bundle?)")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except RecursionError:  # JSON nested deeper than Python's parser recurses
        raise BundleFormatError(f"{mpath}: unreadable manifest (nested too deeply)") from None
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise BundleFormatError(f"{mpath}: unreadable manifest ({e})") from e
    manifest = Manifest.from_dict(data, mpath)
    for name, digest in manifest.files.items():
        _check_inside(root, base, name)
        fpath = root / name
        if not fpath.exists():
            raise BundleMissingFileError(f"{root}: {name} is listed in the manifest but missing")
        if not fpath.is_file():  # a directory, a FIFO, a device
            raise BundleFormatError(f"{root}: {name} is listed in the manifest but not a file")
        if verify_hashes and sha256_file(fpath) != digest:
            raise BundleCorruptError(
                f"{root}: {name} does not match the sha256 recorded at export (corrupt or modified)"
            )
    return Bundle(path=root, manifest=manifest)
