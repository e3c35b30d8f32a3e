"""Type stub for the CUDA module (csrc/cuda/bindings_cuda.cpp), present in CUDA builds only."""

from typing import Any

def status() -> dict[str, Any]: ...
