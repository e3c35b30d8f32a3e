"""Type stub for the CUDA module (csrc/cuda/bindings_cuda.cpp), present in CUDA builds only.

The kernels take device addresses as ints and the fields of each op's parameter struct by name
(csrc/attention/attention.h, csrc/conv2d/conv2d.h); mmfast.ops is the checked entry point.
"""

from typing import Any, ClassVar

# pybind11 enums (not enum.Enum): members are class attributes, `.value` is the int code.
class DType:
    f32: ClassVar[DType]
    f16: ClassVar[DType]
    bf16: ClassVar[DType]
    @property
    def value(self) -> int: ...

class MaskKind:
    none: ClassVar[MaskKind]
    boolean: ClassVar[MaskKind]
    additive: ClassVar[MaskKind]
    @property
    def value(self) -> int: ...

def status() -> dict[str, Any]: ...
def attention(
    *,
    q: int,
    k: int,
    v: int,
    out: int,
    lse: int,
    mask: int,
    mask_kind: MaskKind,
    dtype: DType,
    batch: int,
    q_heads: int,
    kv_heads: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    v_head_dim: int,
    q_stride: tuple[int, int, int],
    k_stride: tuple[int, int, int],
    v_stride: tuple[int, int, int],
    out_stride: tuple[int, int, int],
    mask_stride: tuple[int, int, int, int],
    scale: float,
    softcap: float,
    causal: bool,
    causal_offset: int,
    device: int,
    stream: int,
) -> None: ...
def conv2d_workspace_bytes(
    *,
    x_shape: tuple[int, int, int, int],
    weight_shape: tuple[int, int, int, int],
    out_shape: tuple[int, int, int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pads: tuple[int, int, int, int],
    groups: int,
    dtype: DType,
    device: int,
) -> int: ...
def conv2d(
    *,
    x: int,
    weight: int,
    bias: int,
    out: int,
    workspace: int,
    workspace_bytes: int,
    x_shape: tuple[int, int, int, int],
    weight_shape: tuple[int, int, int, int],
    out_shape: tuple[int, int, int, int],
    x_stride: tuple[int, int, int, int],
    out_stride: tuple[int, int, int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    pads: tuple[int, int, int, int],
    groups: int,
    relu: bool,
    dtype: DType,
    device: int,
    stream: int,
) -> None: ...
