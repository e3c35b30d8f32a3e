"""Type stub for the native CPU module (csrc/bindings.cpp). Call it through mmfast.ops."""

import numpy as np
import numpy.typing as npt

cuda_built: bool
compiler: str

# Limits, defined once in csrc (attention/attention.h, conv2d/conv2d.h, common/device.h).
ATTENTION_MAX_HEAD_DIM: int
ATTENTION_MIN_SOFTCAP: float
ATTENTION_MAX_SOFTCAP: float
CONV_MAX_TAPS: int
CUDA_MAX_GRID_YZ: int

def softmax(
    x: npt.NDArray[np.float32], out: npt.NDArray[np.float32], log: bool = False
) -> None: ...
def attention(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    mask: npt.NDArray[np.float32] | npt.NDArray[np.bool_] | npt.NDArray[np.uint8] | None,
    lse: npt.NDArray[np.float32] | None,
    causal: bool,
    causal_offset: int,
    scale: float,
    softcap: float,
) -> None: ...

CONV_PANEL_ROWS: int
CONV_PANEL_COLS: int

def conv2d_pack(
    weight: npt.NDArray[np.float32], groups: int, panel: int
) -> npt.NDArray[np.float32]: ...
def conv2d(
    x: npt.NDArray[np.float32],
    packed: npt.NDArray[np.float32],
    packed_cols: npt.NDArray[np.float32] | None,
    bias: npt.NDArray[np.float32] | None,
    out: npt.NDArray[np.float32],
    M: int,
    KH: int,
    KW: int,
    stride: tuple[int, int] | list[int],
    dilation: tuple[int, int] | list[int],
    pads: tuple[int, int, int, int] | list[int],
    groups: int,
    relu: bool,
) -> None: ...
def _set_conv_path(path: str) -> None: ...
def _thread_workspace_bytes() -> int: ...
def cpu_features() -> dict[str, bool]: ...
def compiled_variants() -> list[str]: ...
def runnable_variants() -> list[str]: ...
def active_variant() -> str: ...
def set_variant(name: str) -> None: ...
def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...

# Winograd F(2x2, 3x3) for 3x3, stride-1, one-group convolutions (csrc/conv2d/conv2d_winograd.h)
def conv2d_winograd_pack(weight: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
def conv2d_winograd(
    x: npt.NDArray[np.float32],
    packed: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None,
    out: npt.NDArray[np.float32],
    M: int,
    pads: list[int] | tuple[int, int, int, int],
    relu: bool,
) -> None: ...
def _set_winograd_block_tiles(tiles: int) -> None: ...
def l2_cache_bytes() -> int: ...

# precision="bf16" (csrc/conv2d/conv2d_cpu_bf16.h, csrc/attention/attention_cpu_bf16.h)
def bf16_native() -> bool: ...
def round_bf16(a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]: ...
def conv2d_pack_bf16(
    weight: npt.NDArray[np.float32], groups: int, panel: int
) -> npt.NDArray[np.uint32]: ...
def conv2d_bf16(
    x: npt.NDArray[np.float32],
    packed: npt.NDArray[np.uint32],
    packed_cols: npt.NDArray[np.uint32] | None,
    bias: npt.NDArray[np.float32] | None,
    out: npt.NDArray[np.float32],
    M: int,
    KH: int,
    KW: int,
    stride: tuple[int, int] | list[int],
    dilation: tuple[int, int] | list[int],
    pads: tuple[int, int, int, int] | list[int],
    groups: int,
    relu: bool,
) -> None: ...
def attention_bf16(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    mask: npt.NDArray[np.float32] | npt.NDArray[np.bool_] | npt.NDArray[np.uint8] | None,
    lse: npt.NDArray[np.float32] | None,
    causal: bool,
    causal_offset: int,
    scale: float,
    softcap: float,
) -> None: ...
