"""Native operators: mmfast's own C++ (and CUDA) kernels behind a checked Python API.

Each op takes numpy arrays or torch CPU tensors (shared memory through DLPack, no copy) and
returns the kind it was given. Bad arguments raise TypeError / ValueError naming the argument.
One private module per op family (argument checks + conversion); this module re-exports them.
"""

from __future__ import annotations

from ._attention import attention
from ._conv2d import Conv2d, conv2d
from ._softmax import log_softmax, softmax

__all__ = ["Conv2d", "attention", "conv2d", "log_softmax", "softmax"]
