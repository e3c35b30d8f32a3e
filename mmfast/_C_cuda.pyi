"""Type stub for the CUDA module (csrc/cuda/bindings_cuda.cpp), present in CUDA builds only.

The kernels take device addresses as ints; mmfast/_cuda_ops.py is the checked entry point.
"""

from typing import Any

def status() -> dict[str, Any]: ...
def attention(
    q: int,
    k: int,
    v: int,
    o: int,
    lse: int,
    mask: int,
    mask_kind: int,
    q_stride: tuple[int, int, int],
    k_stride: tuple[int, int, int],
    v_stride: tuple[int, int, int],
    o_stride: tuple[int, int, int],
    mask_stride: tuple[int, ...],
    dims: tuple[int, int, int, int, int, int, int],
    causal: bool,
    causal_offset: int,
    scale: float,
    softcap: float,
    dtype: int,
    device: int,
    stream: int,
) -> None: ...
def conv2d_workspace_bytes(geom: list[int], dtype: int, device: int) -> int: ...
def conv2d(
    x: int,
    w: int,
    bias: int,
    y: int,
    workspace: int,
    workspace_bytes: int,
    geom: list[int],
    relu: bool,
    dtype: int,
    device: int,
    stream: int,
) -> None: ...
