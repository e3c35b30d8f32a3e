"""CUDA arrays for mmfast.ops: torch CUDA tensors and CuPy arrays, as the CUDA kernels see them.

Arrays are recognised without importing either framework (the caller has already imported the
one it passes). Outputs and scratch space are allocated with the caller's framework on the
input's device, and the kernels are enqueued on the caller's *current stream* of that device,
so they are ordered with the caller's own work exactly as a framework op would be; like a
framework op, the call returns before the GPU has finished.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CudaArray",
    "cuda_array",
    "cuda_contiguous",
    "cuda_dtype",
    "cuda_empty",
    "cuda_is_c_contiguous",
    "cuda_out",
    "cuda_stream",
    "is_cuda_array",
    "overlaps",
    "same_place",
]

# dtype name -> the name of its mmfast._C_cuda.DType member
_KERNEL_DTYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "bool": 1, "uint8": 1}
_DLPACK_CUDA = 2  # kDLCUDA


def _framework(x: Any) -> str | None:
    mod = type(x).__module__
    if mod.startswith("torch") and hasattr(x, "data_ptr"):
        return "torch"
    if mod.startswith("cupy") and hasattr(x, "__cuda_array_interface__"):
        return "cupy"
    return None


def is_cuda_array(x: Any) -> bool:
    """True for a torch CUDA tensor or a CuPy array (both live in GPU memory)."""
    fw = _framework(x)
    if fw == "torch":
        return bool(getattr(x, "is_cuda", False))
    if fw == "cupy":
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None and hasattr(x, "__cuda_array_interface__"):
        try:
            return int(dev()[0]) == _DLPACK_CUDA
        except Exception:  # a broken __dlpack_device__ is "not a CUDA array"
            return False
    return False


@dataclass(frozen=True)
class CudaArray:
    """A CUDA array as the kernels see it: pointer, shape, strides in elements, dtype name."""

    obj: Any
    framework: str
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    device: int


def cuda_array(x: Any, name: str) -> CudaArray:
    """Describe a torch CUDA tensor or CuPy array; TypeError naming `name` for anything else."""
    fw = _framework(x)
    if fw == "torch":
        if not x.is_cuda:
            raise TypeError(
                f"{name}: tensor is on {x.device}; expected a CUDA tensor like the others"
            )
        if x.requires_grad:
            x = x.detach()
        return CudaArray(
            x,
            fw,
            int(x.data_ptr()),
            tuple(int(d) for d in x.shape),
            tuple(int(s) for s in x.stride()),
            str(x.dtype).removeprefix("torch."),
            int(x.device.index),
        )
    if fw == "cupy":
        item = x.dtype.itemsize
        return CudaArray(
            x,
            fw,
            int(x.data.ptr),
            tuple(int(d) for d in x.shape),
            tuple(int(s) // item for s in x.strides),
            "bool" if x.dtype.kind == "b" else x.dtype.name,
            int(x.device.id),
        )
    raise TypeError(
        f"{name}: expected a torch CUDA tensor or a CuPy array, got {type(x).__module__}."
        f"{type(x).__name__}"
    )


def cuda_dtype(a: CudaArray, name: str) -> str:
    """The kernels' name of a's float dtype ("f32", "f16", "bf16"); TypeError otherwise."""
    code = _KERNEL_DTYPES.get(a.dtype)
    if code is None:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {a.dtype}")
    return code


def cuda_empty(like: CudaArray, shape: tuple[int, ...], dtype: str) -> Any:
    """An uninitialised array of `shape` and `dtype` on like's device, from like's framework."""
    if like.framework == "torch":
        torch = sys.modules["torch"]
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.obj.device)
    cupy = sys.modules["cupy"]
    with cupy.cuda.Device(like.device):
        return cupy.empty(shape, dtype=dtype)


def cuda_contiguous(a: CudaArray, name: str) -> CudaArray:
    """`a` if it is C-contiguous, else a contiguous copy (on its device and current stream)."""
    if a.framework == "torch":
        c = a.obj.contiguous()
    else:
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(a.device):
            c = cupy.ascontiguousarray(a.obj)
    return a if c is a.obj else cuda_array(c, name)


def cuda_is_c_contiguous(a: CudaArray) -> bool:
    """The framework's own test (it ignores the strides of size-1 dimensions)."""
    if a.framework == "torch":
        return bool(a.obj.is_contiguous())
    return bool(a.obj.flags.c_contiguous)


def cuda_stream(a: CudaArray) -> int:
    """The caller's current stream on a's device (the framework's own notion of it)."""
    if a.framework == "torch":
        return int(sys.modules["torch"].cuda.current_stream(a.obj.device).cuda_stream)
    cupy = sys.modules["cupy"]
    with cupy.cuda.Device(a.device):
        return int(cupy.cuda.get_current_stream().ptr)


def same_place(a: CudaArray, ref: CudaArray, name: str, ref_name: str) -> None:
    """TypeError / ValueError unless `a` is of ref's framework and on ref's device."""
    if a.framework != ref.framework:
        raise TypeError(f"{name}: a {a.framework} array, but {ref_name} is a {ref.framework} one")
    if a.device != ref.device:
        raise ValueError(f"{name}: on cuda:{a.device}, but {ref_name} is on cuda:{ref.device}")


def _extent(a: CudaArray) -> tuple[int, int]:
    """[first, last) byte addresses a's elements occupy (CuPy strides may be negative)."""
    if 0 in a.shape:
        return a.ptr, a.ptr
    lo = sum((d - 1) * st for d, st in zip(a.shape, a.strides, strict=True) if st < 0)
    hi = sum((d - 1) * st for d, st in zip(a.shape, a.strides, strict=True) if st > 0)
    size = _ITEMSIZE.get(a.dtype, 8)
    return a.ptr + lo * size, a.ptr + (hi + 1) * size


def overlaps(a: CudaArray, b: CudaArray) -> bool:
    """Whether the memory ranges of a and b intersect (a conservative test: the kernels
    write `out` while reading the inputs, so any shared range is refused)."""
    (a0, a1), (b0, b1) = _extent(a), _extent(b)
    return a.device == b.device and a0 < b1 and b0 < a1


def cuda_out(out: Any, ref: CudaArray, shape: tuple[int, ...], dtype: str) -> CudaArray:
    """The caller's ``out``: of ref's framework and device, `dtype`, `shape`."""
    o = cuda_array(out, "out")
    same_place(o, ref, "out", "the input")
    if o.dtype != dtype:
        raise TypeError(f"out: expected {dtype}, got {o.dtype}")
    if o.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {o.shape}")
    return o
