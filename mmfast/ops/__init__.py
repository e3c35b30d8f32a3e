"""Native operators: mmfast's own C++ and CUDA kernels behind a checked Python API.

Each op takes numpy arrays or torch CPU tensors (shared memory through DLPack, no copy) and
returns the kind it was given; attention and conv2d also take torch CUDA tensors and CuPy
arrays. Bad arguments raise TypeError / ValueError naming the argument.

One module per op, holding that op's argument checks once and both its CPU and CUDA paths
(_attention, _conv2d, _softmax); the array helpers are _arrays (numpy / torch CPU) and
_cuda_arrays (torch CUDA / CuPy). The native limits are mmfast._C constants
(ATTENTION_MAX_HEAD_DIM, CONV_MAX_TAPS, CUDA_MAX_GRID_YZ).
"""

from __future__ import annotations

from ._attention import attention
from ._conv2d import Conv2d, conv2d
from ._softmax import log_softmax, softmax

__all__ = ["Conv2d", "attention", "conv2d", "log_softmax", "softmax"]
