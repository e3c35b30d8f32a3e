"""The CUDA side of mmfast.ops: attention and conv2d on torch CUDA tensors or CuPy arrays.

Arrays are recognised without importing either framework (the caller has already imported the
one it passes). Outputs and scratch space are allocated with the caller's framework on the
input's device, and the kernels are enqueued on the caller's *current stream* of that device,
so they are ordered with the caller's own work exactly as a framework op would be; like a
framework op, the call returns before the GPU has finished.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._cuda import cuda_module, cuda_status

__all__ = ["cuda_attention", "cuda_conv2d", "is_cuda_array"]

_DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}
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
class _Arr:
    """A CUDA array as the kernels see it: pointer, shape, strides in elements, dtype name."""

    obj: Any
    framework: str
    ptr: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    device: int


def _describe(x: Any, name: str) -> _Arr:
    fw = _framework(x)
    if fw == "torch":
        if not x.is_cuda:
            raise TypeError(
                f"{name}: tensor is on {x.device}; expected a CUDA tensor like the others"
            )
        if x.requires_grad:
            x = x.detach()
        return _Arr(
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
        return _Arr(
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


_available_module: Any = None


def _module() -> Any:
    """The CUDA extension, or RuntimeError saying why CUDA kernels cannot run here. A success
    is remembered: the status query asks the driver for device properties, which costs more
    than a small kernel."""
    global _available_module
    if _available_module is None:
        s = cuda_status()
        if not s["available"]:
            raise RuntimeError(f"mmfast CUDA kernels are unavailable: {s['error']}")
        _available_module = cuda_module()
    return _available_module


def _empty(like: _Arr, shape: tuple[int, ...], dtype: str) -> Any:
    if like.framework == "torch":
        torch = sys.modules["torch"]
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.obj.device)
    cupy = sys.modules["cupy"]
    with cupy.cuda.Device(like.device):
        return cupy.empty(shape, dtype=dtype)


def _contiguous(a: _Arr, name: str) -> _Arr:
    if a.framework == "torch":
        c = a.obj.contiguous()
    else:
        cupy = sys.modules["cupy"]
        with cupy.cuda.Device(a.device):  # the copy on a's device and its current stream
            c = cupy.ascontiguousarray(a.obj)
    return a if c is a.obj else _describe(c, name)


def _is_c_contiguous(a: _Arr) -> bool:
    """The framework's own test (it ignores the strides of size-1 dimensions)."""
    if a.framework == "torch":
        return bool(a.obj.is_contiguous())
    return bool(a.obj.flags.c_contiguous)


def _stream(a: _Arr) -> int:
    """The caller's current stream on a's device (the framework's own notion of it)."""
    if a.framework == "torch":
        return int(sys.modules["torch"].cuda.current_stream(a.obj.device).cuda_stream)
    cupy = sys.modules["cupy"]
    with cupy.cuda.Device(a.device):
        return int(cupy.cuda.get_current_stream().ptr)


def _same_place(a: _Arr, ref: _Arr, name: str, ref_name: str) -> None:
    if a.framework != ref.framework:
        raise TypeError(f"{name}: a {a.framework} array, but {ref_name} is a {ref.framework} one")
    if a.device != ref.device:
        raise ValueError(f"{name}: on cuda:{a.device}, but {ref_name} is on cuda:{ref.device}")


_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "bool": 1, "uint8": 1}


def _extent(a: _Arr) -> tuple[int, int]:
    """[first, last) byte addresses a's elements occupy (CuPy strides may be negative)."""
    if 0 in a.shape:
        return a.ptr, a.ptr
    lo = sum((d - 1) * st for d, st in zip(a.shape, a.strides, strict=True) if st < 0)
    hi = sum((d - 1) * st for d, st in zip(a.shape, a.strides, strict=True) if st > 0)
    size = _ITEMSIZE.get(a.dtype, 8)
    return a.ptr + lo * size, a.ptr + (hi + 1) * size


def _overlaps(a: _Arr, b: _Arr) -> bool:
    """Whether the memory ranges of a and b intersect (a conservative test: the kernels
    write `out` while reading the inputs, so any shared range is refused)."""
    (a0, a1), (b0, b1) = _extent(a), _extent(b)
    return a.device == b.device and a0 < b1 and b0 < a1


def _float_dtype(a: _Arr, name: str) -> int:
    code = _DTYPE_CODES.get(a.dtype)
    if code is None:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {a.dtype}")
    return code


def _check_out(out: Any, ref: _Arr, shape: tuple[int, ...], dtype: str) -> _Arr:
    o = _describe(out, "out")
    _same_place(o, ref, "out", "the input")
    if o.dtype != dtype:
        raise TypeError(f"out: expected {dtype}, got {o.dtype}")
    if o.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {o.shape}")
    return o


def cuda_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    attn_mask: Any,
    dims_of: Callable[..., tuple[int, int, int, int, int, int, int]],
    is_causal: bool,
    causal_offset_of: Any,
    scale: float | None,
    softcap: float,
    out: Any,
    return_lse: bool,
) -> Any:
    """mmfast.ops.attention on CUDA arrays (argument rules: see that function).

    ``dims_of(q.shape, k.shape, v.shape)`` runs the shape checks shared with the CPU path and
    returns (B, Hq, Hkv, Lq, Lk, D, Dv); ``causal_offset_of(Lq, Lk)`` gives the causal offset
    for the chosen alignment.
    """
    qa, ka, va = _describe(q, "q"), _describe(k, "k"), _describe(v, "v")
    mod = _module()
    for name, a in (("k", ka), ("v", va)):
        _same_place(a, qa, name, "q")
    code = _float_dtype(qa, "q")
    for name, a in (("k", ka), ("v", va)):
        if a.dtype != qa.dtype:
            raise TypeError(f"{name}: dtype {a.dtype} differs from q's {qa.dtype}")
    B, Hq, Hkv, Lq, Lk, D, Dv = dims_of(qa.shape, ka.shape, va.shape)
    if B > 65535 or Hq > 65535:
        raise ValueError(f"q: batch {B} and heads {Hq} must each be at most 65535 on CUDA")
    # The kernels read rows with unit stride along D; anything else is copied once.
    qa, ka, va = (
        a if a.shape[3] <= 1 or a.strides[3] == 1 else _contiguous(a, n)
        for n, a in (("q", qa), ("k", ka), ("v", va))
    )

    mask_kind, mask_ptr = 0, 0
    mask_strides: tuple[int, ...] = (0, 0, 0, 0)
    mask_obj = None
    if attn_mask is not None:
        ma = _describe(attn_mask, "attn_mask")
        _same_place(ma, qa, "attn_mask", "q")
        if len(ma.shape) > 4:
            raise ValueError(f"attn_mask: expected at most 4 dimensions, got {len(ma.shape)}")
        if ma.dtype == "bool":
            mask_kind = 1
        elif ma.dtype in _DTYPE_CODES:
            mask_kind = 2
            if ma.dtype != "float32":  # the kernel adds float32 values
                if ma.framework == "torch":
                    conv = ma.obj.float()
                else:
                    with sys.modules["cupy"].cuda.Device(ma.device):
                        conv = ma.obj.astype("float32")
                ma = _describe(conv, "attn_mask")
        else:
            raise TypeError(f"attn_mask: expected bool or a float dtype, got {ma.dtype}")
        full = (B, Hq, Lq, Lk)
        shape = (1,) * (4 - len(ma.shape)) + ma.shape
        strides = (0,) * (4 - len(ma.shape)) + ma.strides
        if any(s not in (1, f) for s, f in zip(shape, full, strict=True)):
            raise ValueError(
                f"attn_mask: shape {ma.shape} does not broadcast to (B, Hq, Lq, Lk) = {full}"
            )
        mask_strides = tuple(  # a broadcast dimension is read with stride 0
            0 if s == 1 and f != 1 else st for s, f, st in zip(shape, full, strides, strict=True)
        )
        mask_obj, mask_ptr = ma.obj, ma.ptr  # keeps a converted mask alive through the call

    oshape = (B, Hq, Lq, Dv)
    oa = (
        _describe(_empty(qa, oshape, qa.dtype), "out")
        if out is None
        else _check_out(out, qa, oshape, qa.dtype)
    )
    if oa.strides[3] != 1 and Dv > 1:
        raise ValueError("out: the last dimension must be contiguous")
    if out is not None:
        mask_arr = [("attn_mask", _describe(mask_obj, "attn_mask"))] if mask_obj is not None else []
        for name, a in [("q", qa), ("k", ka), ("v", va), *mask_arr]:
            if _overlaps(oa, a):
                raise ValueError(f"out: overlaps {name}")
    lse = _describe(_empty(qa, (B, Hq, Lq), "float32"), "lse") if return_lse else None

    scale_f = 1.0 / math.sqrt(D) if scale is None else float(scale)
    offset = causal_offset_of(Lq, Lk)
    if B * Hq * Lq:
        mod.attention(
            qa.ptr,
            ka.ptr,
            va.ptr,
            oa.ptr,
            lse.ptr if lse is not None else 0,
            mask_ptr,
            mask_kind,
            qa.strides[:3],
            ka.strides[:3],
            va.strides[:3],
            oa.strides[:3],
            mask_strides,
            (B, Hq, Hkv, Lq, Lk, D, Dv),
            bool(is_causal),
            int(offset),
            scale_f,
            float(softcap),
            code,
            qa.device,
            _stream(qa),
        )
    del mask_obj
    result = oa.obj if out is None else out
    if lse is not None:
        return result, lse.obj
    return result


def _fill_bias(o: _Arr, bias: _Arr | None, relu: bool) -> None:
    """o[n, m, :, :] = bias[m] (0 without a bias), then ReLU: with the caller's framework, on
    its current stream."""
    if o.framework == "torch":
        if bias is None:
            o.obj.zero_()
        else:
            o.obj.copy_(bias.obj.view(1, -1, 1, 1).expand_as(o.obj))
            if relu:
                o.obj.clamp_(min=0)
        return
    cupy = sys.modules["cupy"]
    with cupy.cuda.Device(o.device):
        o.obj[...] = 0 if bias is None else bias.obj.reshape(1, -1, 1, 1)
        if relu:
            cupy.maximum(o.obj, 0, out=o.obj)


def cuda_conv2d(
    x: Any,
    weight: Any,
    bias: Any,
    *,
    geometry: Any,
    groups: int,
    relu: bool,
    out: Any,
) -> Any:
    """mmfast.ops.conv2d on CUDA arrays. ``geometry(N, C, H, W, M, Cg, KH, KW)`` checks the
    arguments that do not depend on the device and returns (stride, dilation, pads, (OH, OW))."""
    xa = _describe(x, "x")
    mod = _module()
    wa = _describe(weight, "weight")
    _same_place(wa, xa, "weight", "x")
    code = _float_dtype(xa, "x")
    if wa.dtype != xa.dtype:
        raise TypeError(f"weight: dtype {wa.dtype} differs from x's {xa.dtype}")
    if len(xa.shape) != 4:
        raise ValueError(f"x: expected 4 dimensions, got {len(xa.shape)} {xa.shape}")
    if len(wa.shape) != 4:
        raise ValueError(f"weight: expected 4 dimensions, got {len(wa.shape)} {wa.shape}")
    N, C, H, W = xa.shape
    M, Cg, KH, KW = wa.shape
    stride, dilation, pads, (OH, OW) = geometry(N, C, H, W, M, Cg, KH, KW)
    ba = None
    if bias is not None:
        ba = _describe(bias, "bias")
        _same_place(ba, xa, "bias", "x")
        if ba.dtype != xa.dtype:
            raise TypeError(f"bias: dtype {ba.dtype} differs from x's {xa.dtype}")
        if ba.shape != (M,):
            raise ValueError(f"bias: expected shape ({M},), got {ba.shape}")
        ba = _contiguous(ba, "bias")
    xa, wa = _contiguous(xa, "x"), _contiguous(wa, "weight")
    oshape = (N, M, OH, OW)
    if out is None:
        oa = _describe(_empty(xa, oshape, xa.dtype), "out")
    else:
        oa = _check_out(out, xa, oshape, xa.dtype)
        if not _is_c_contiguous(oa):
            raise ValueError("out: must be C-contiguous")
        for name, a in (("x", xa), ("weight", wa), ("bias", ba)):
            if a is not None and _overlaps(oa, a):
                raise ValueError(f"out: overlaps {name} (convolution cannot run in place)")
    if N * M * OH * OW and C * H * W == 0:
        # Nothing to read (every tap lands in padding): the output is the bias (after ReLU).
        _fill_bias(oa, ba, relu)
        return oa.obj if out is None else out
    if N * M * OH * OW:
        geom = [N, C, H, W, M, KH, KW, OH, OW, *stride, *dilation, pads[0], pads[1], groups]
        nbytes = int(mod.conv2d_workspace_bytes(geom, code, xa.device))
        ws = _empty(xa, (nbytes,), "uint8") if nbytes else None
        mod.conv2d(
            xa.ptr,
            wa.ptr,
            ba.ptr if ba is not None else 0,
            oa.ptr,
            _describe(ws, "workspace").ptr if ws is not None else 0,
            nbytes,
            geom,
            bool(relu),
            code,
            xa.device,
            _stream(xa),
        )
        # The caller's allocator may hand the workspace to another op only after the stream
        # passes this point: torch's caching allocator and CuPy's pool are both stream-ordered.
        del ws
    return oa.obj if out is None else out
