"""What the task pipelines share: loading a bundle's sessions, images and texts.

Everything a caller or a bundle can get wrong is reported as a typed error naming the argument
or the file: a :class:`~mmfast.bundle.BundleError` subclass for the bundle (one ONNX Runtime
cannot load or run: :class:`BundleGraphError`; files that disagree with each other:
:class:`BundleMismatchError`), ValueError or TypeError for an argument, an OSError subclass
for a file that cannot be opened. The graphs' inputs, outputs and fixed sizes are checked
against what the pipeline feeds them when the bundle is loaded, not at the first call.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, TypeVar

import numpy as np
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state
from PIL import Image

from ._checks import one_line
from .bundle import (
    Bundle,
    BundleFormatError,
    BundleGraphError,
    BundleMismatchError,
    Manifest,
    load_bundle,
)
from .hf_tokenizer import HFTokenizer
from .preprocess import load_rgb, preprocess
from .session import Session, default_cache_dir
from .tokenizer import Tokenizer

__all__ = [
    "ImageLike",
    "Pipeline",
    "as_image_list",
    "load_image",
    "pad_tokens",
]

ImageLike = str | Path | Image.Image | np.ndarray

# What ONNX Runtime raises (InvalidProtobuf, InvalidArgument, Fail, ...): plain Exception
# subclasses of its extension module, one per status code.
_ORT_ERRORS: tuple[type[Exception], ...] = tuple(
    c for c in vars(_ort_state).values() if isinstance(c, type) and issubclass(c, Exception)
)


def as_image_list(images: Sequence[ImageLike] | ImageLike) -> Sequence[ImageLike]:
    """One image (a path, PIL image or array) or a sequence of them -> a sequence."""
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        return [images]
    if not isinstance(images, Sequence):
        raise TypeError(
            f"images: expected an image or a sequence of images, got {type(images).__name__}"
        )
    return images


def load_image(image: object, i: int) -> Image.Image | np.ndarray:
    """images[i] (a path, PIL image or (H, W, 3) uint8 array) -> what preprocessing takes.

    A file that cannot be opened keeps its OSError subclass (FileNotFoundError,
    IsADirectoryError, PermissionError); one that cannot be decoded is a ValueError.
    """
    if isinstance(image, (str, Path)):
        try:
            return load_rgb(image)
        except FileNotFoundError:
            raise FileNotFoundError(f"images[{i}]: no such file: {image}") from None
        except OSError as e:
            raise type(e)(f"images[{i}]: cannot open {image}: {e.strerror or e}") from e
        except ValueError as e:
            raise ValueError(f"images[{i}]: cannot read {image} as an image: {e}") from e
    if isinstance(image, (Image.Image, np.ndarray)):
        return image
    raise TypeError(
        f"images[{i}]: expected a path, a PIL image or an array, got {type(image).__name__}"
    )


def pad_tokens(ids: list[list[int]], max_len: int, pad: int, fixed: bool = False) -> np.ndarray:
    """Token id lists -> (B, T) int64, right-padded with `pad` (<pad>'s id), cut at max_len;
    T = the longest list's length, or max_len if `fixed`."""
    t = max_len if fixed else max(1, min(max_len, max(len(x) for x in ids)))
    out = np.full((len(ids), t), pad, np.int64)
    for i, x in enumerate(ids):
        x = x[:t]
        out[i, : len(x)] = x
    return out


# Threads preprocessing a batch's images: the cores this process may use, at most 4 (so at
# most 4 decoded photos are in memory at a time). On one thread a batch of 32 photos spends
# ~10% of a CLIP call there (benchmarks/README.md, "CLIP embeddings").
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_PREPROCESS_WORKERS = min(4, _CORES or 1)


@functools.cache
def _preprocess_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_PREPROCESS_WORKERS, thread_name_prefix="mmfast-preprocess")


# a forked child has the pool object but none of its threads: it makes its own
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_preprocess_pool.cache_clear)


P = TypeVar("P", bound="Pipeline")


class Pipeline:
    """A bundle of one task with its sessions, preprocessing and tokenizer.

    A subclass names its task and the graphs it runs (:meth:`graph_files`) and checks, in
    :meth:`check_bundle`, that they take and give what it uses (reading there any file of its
    own, such as VQA's answers); it reads its task's manifest sections, which loading has
    checked are there (mmfast.bundle.TASK_SECTIONS).
    """

    task: ClassVar[str] = ""

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None) -> None:
        if bundle.task != self.task:
            raise BundleFormatError(
                f"{bundle.path}: a {bundle.task!r} bundle, not a {self.task!r} one"
            )
        self.bundle = bundle
        m = bundle.manifest
        cache = default_cache_dir()  # per user, outside the bundle (see mmfast.session)
        self.sessions: dict[str, Session] = {}
        for g in self.graph_files(m):
            path = bundle.file(g)
            try:
                self.sessions[g] = Session(
                    path,
                    device=device,
                    threads=threads,
                    optimized_dir=cache,
                    expected_sha256=m.files[g],
                )
            except _ORT_ERRORS as e:
                raise BundleGraphError(
                    f"{path}: ONNX Runtime cannot load it ({one_line(e)})"
                ) from e
        self.preprocess_config = m.preprocess
        vocab = bundle.file(m.vocab)
        self.tokenizer: Tokenizer | HFTokenizer
        try:
            if m.tokenizer is not None:  # a Hugging Face tokenizer.json
                clean_up = m.tokenizer.clean_up_tokenization_spaces
                self.tokenizer = HFTokenizer(vocab, m.special_tokens, clean_up)
            else:
                self.tokenizer = Tokenizer.load(vocab, m.special_tokens)
        except ValueError as e:  # unreadable, or disagrees with the manifest's special_tokens
            raise BundleFormatError(f"{vocab}: {e}") from e
        vocab_size = m.config.get("vocab_size")
        if type(vocab_size) is int and vocab_size != len(self.tokenizer):
            # a longer vocabulary makes ids past the embedding table, a shorter one other words
            raise BundleMismatchError(
                f"{vocab}: {len(self.tokenizer)} tokens, the model's config.vocab_size is "
                f"{vocab_size}"
            )
        for g, s in self.sessions.items():
            if "images" in s.input_names:  # (B, 3, size, size)
                if self.preprocess_config.resize_mode == "shortest_edge_capped":
                    raise BundleMismatchError(
                        f"{bundle.path / g}: takes square images, the manifest's preprocessing "
                        "keeps each image's own size (resize_mode 'shortest_edge_capped')"
                    )
                size = self.preprocess_config.size
                self.require_dim(g, "images", 1, 3, "images have 3 channels (RGB)")
                for axis in (2, 3):
                    why = f"the manifest's preprocess.size is {size}"
                    self.require_dim(g, "images", axis, size, why)
        self.check_bundle()

    @classmethod
    def load(
        cls: type[P], bundle: str | Path, device: str = "cpu", threads: int | None = None
    ) -> P:
        """Load and verify a bundle directory (see mmfast.bundle for the checks).

        device: "cpu" or "cuda" (ONNX Runtime's CUDA provider; falls back to the CPU, said
        aloud). threads: intra-op threads per session, 1..MAX_THREADS (None: ONNX Runtime's
        default, one per core).
        """
        if not isinstance(bundle, (str, os.PathLike)):
            raise TypeError(f"bundle: expected a directory path, got {type(bundle).__name__}")
        return cls(load_bundle(bundle), device=device, threads=threads)

    @classmethod
    def graph_files(cls, manifest: Manifest) -> list[str]:
        """The bundle's graphs this pipeline runs, one session each."""
        raise NotImplementedError

    def check_bundle(self) -> None:
        """BundleError unless the graphs take and give what the pipeline uses (called once
        the sessions and the tokenizer are made)."""
        raise NotImplementedError

    def require_io(self, graph: str, inputs: Collection[str], outputs: Collection[str]) -> None:
        """BundleMismatchError unless `graph` takes exactly `inputs` (what the pipeline feeds it)
        and gives at least `outputs` (what it reads)."""
        s = self.sessions[graph]
        if set(s.input_names) != set(inputs):
            raise BundleMismatchError(
                f"{self.bundle.path / graph}: takes inputs {s.input_names}, "
                f"{type(self).__name__} feeds it {sorted(inputs)}"
            )
        missing = [o for o in outputs if o not in s.output_names]
        if missing:
            raise BundleMismatchError(
                f"{self.bundle.path / graph}: no output {', '.join(missing)} "
                f"(it gives {s.output_names})"
            )

    def fixed_dim(self, graph: str, name: str, axis: int) -> int | None:
        """The size of axis `axis` of `graph`'s input or output `name`, if the graph fixes it
        (None for a symbolic size such as "batch")."""
        inner = self.sessions[graph].inner
        for arg in (*inner.get_inputs(), *inner.get_outputs()):
            if arg.name == name:
                shape = arg.shape
                if -len(shape) <= axis < len(shape) and type(shape[axis]) is int:
                    return int(shape[axis])
                return None
        return None

    def require_dim(self, graph: str, name: str, axis: int, want: int, why: str) -> None:
        """BundleMismatchError if `graph` fixes axis `axis` of `name` to a size other than
        `want`; `why` says where `want` comes from ("the vocabulary has 19 tokens")."""
        got = self.fixed_dim(graph, name, axis)
        if got is not None and got != want:
            raise BundleMismatchError(
                f"{self.bundle.path / graph}: {name!r} has size {got} on axis {axis}, but {why}"
            )

    def tokens(self, texts: Sequence[str], max_len: int, fixed: bool = False) -> np.ndarray:
        """(B, T) int64 model input: each text's ids (<bos> ... <eos>), padded with <pad> (to
        max_len if `fixed`). A Hugging Face tokenizer cuts a long text as transformers'
        truncation=True does (its special tokens kept); the word-level one at max_len."""
        if len(texts) == 0:
            raise ValueError("texts: nothing to tokenize")
        if isinstance(self.tokenizer, HFTokenizer):
            ids = [self.tokenizer.encode(t, max_length=max_len) for t in texts]
        else:
            ids = [self.tokenizer.encode(t) for t in texts]
        return pad_tokens(ids, max_len, self.tokenizer.pad_id, fixed)

    def images_at_own_size(self, images: Sequence[ImageLike], first: int = 0) -> list[np.ndarray]:
        """Each image preprocessed at its own size, (3, H_i, W_i) float32 (resize_mode
        "shortest_edge_capped": ViLT's), by the same threads as :meth:`pixels`."""
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(images)
        self._preprocess_each(images, first, out.__setitem__)
        return out

    def pixels(self, images: Sequence[ImageLike], first: int = 0) -> np.ndarray:
        """(B, 3, S, S) float32 model input. Images are decoded and resized by up to
        _PREPROCESS_WORKERS threads (Pillow's decode and resize and numpy release the GIL), so
        that many decoded photos are in memory at a time; errors name the first bad image in
        order as images[first + i]."""
        size = self.preprocess_config.size
        out = np.empty((len(images), 3, size, size), np.float32)
        self._preprocess_each(images, first, out.__setitem__)
        return out

    def _preprocess_each(
        self,
        images: Sequence[ImageLike],
        first: int,
        store: Callable[[int, np.ndarray], None],
    ) -> None:
        """store(i, images[i] decoded and preprocessed) for every i, on up to
        _PREPROCESS_WORKERS threads; errors name the first bad image in order as
        images[first + i]."""
        if len(images) == 0:
            raise ValueError("images: no images")

        def one(i: int) -> None:
            decoded = load_image(images[i], first + i)
            try:
                store(i, preprocess(decoded, self.preprocess_config))
            except ValueError as e:
                raise ValueError(f"images[{first + i}]: {e}") from e

        if len(images) < 2 or _PREPROCESS_WORKERS < 2:
            for i in range(len(images)):
                one(i)
        else:
            # map re-raises the first failing image's error, in the images' order
            list(_preprocess_pool().map(one, range(len(images))))

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.sessions[graph]
        try:
            outs = s.run(feeds)
        except _ORT_ERRORS as e:
            raise BundleGraphError(
                f"{self.bundle.path / graph}: ONNX Runtime failed to run it ({one_line(e)})"
            ) from e
        return dict(zip(s.output_names, outs, strict=True))
