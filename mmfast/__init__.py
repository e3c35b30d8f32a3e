"""mmfast: fast inference for multimodal (image + text) models.

The runtime needs numpy, onnxruntime, Pillow and the native extension ``mmfast._C``; it never
imports torch. The PyTorch side (models, training, ONNX export) is the ``mmfast_export``
package, installed with the ``export`` extra.
"""

from __future__ import annotations

from . import ops
from ._C import get_num_threads, set_num_threads
from ._cuda import cuda_status
from ._info import info
from ._version import __version__

__all__ = [
    "VQA",
    "Captioner",
    "Reranker",
    "Retriever",
    "__version__",
    "cuda_status",
    "get_num_threads",
    "info",
    "make_index",
    "open_index",
    "ops",
    "set_num_threads",
]


def __getattr__(name: str) -> object:
    # The pipelines import onnxruntime and Pillow: loaded on first use, not with `import mmfast`.
    if name == "Captioner":
        from .captioner import Captioner

        return Captioner
    if name == "Reranker":
        from .reranker import Reranker

        return Reranker
    if name == "Retriever":
        from .retriever import Retriever

        return Retriever
    if name == "VQA":
        from .vqa import VQA

        return VQA
    if name in ("make_index", "open_index"):  # vector indexes (numpy; faiss only when asked)
        from . import index

        return getattr(index, name)
    raise AttributeError(f"module 'mmfast' has no attribute {name!r}")
