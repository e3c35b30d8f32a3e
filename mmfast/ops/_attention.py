"""Fused scaled-dot-product attention: the argument checks (once, for both devices), then the
CPU path (numpy / torch CPU -> mmfast._C, csrc/attention/attention_cpu.cpp) or the CUDA path
(torch CUDA / CuPy -> mmfast._C_cuda, csrc/attention/attention_cuda.cu).

Both paths fill the same parameter set (csrc/attention/attention.h), whose invariants the C++
side checks again before a kernel reads it.
"""

from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple

import numpy as np

from .. import _C
from .._cuda import cuda_kernels
from ._arrays import from_numpy, host_array, host_out, overlap, to_numpy
from ._bf16 import check_precision, host_array_bf16
from ._cuda_arrays import (
    CudaArray,
    cuda_array,
    cuda_contiguous,
    cuda_dtype,
    cuda_empty,
    cuda_out,
    cuda_stream,
    is_cuda_array,
    overlaps,
    same_place,
)

__all__ = ["attention"]

_ALIGNS = ("top_left", "bottom_right")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class _Dims(NamedTuple):
    """The sizes of one call (the fields of AttentionParams)."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    v_head_dim: int


def _dims(q_shape: tuple[int, ...], k_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> _Dims:
    """The shape checks both devices share: q (B, Hq, Lq, D), k (B, Hkv, Lk, D),
    v (B, Hkv, Lk, Dv)."""
    for name, shape in (("q", q_shape), ("k", k_shape), ("v", v_shape)):
        if len(shape) != 4:
            raise ValueError(f"{name}: expected 4 dimensions (B, H, L, D), got {len(shape)}")
    B, Hq, Lq, D = (int(d) for d in q_shape)
    _, Hkv, Lk, _ = (int(d) for d in k_shape)
    Dv = int(v_shape[3])
    if k_shape[0] != B:
        raise ValueError(f"k: batch size {k_shape[0]} differs from q's {B}")
    if v_shape[0] != B:
        raise ValueError(f"v: batch size {v_shape[0]} differs from q's {B}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"k: {Hkv} kv heads do not divide q's {Hq} heads")
    if v_shape[1] != Hkv:
        raise ValueError(f"v: {v_shape[1]} heads differ from k's {Hkv}")
    if k_shape[3] != D:
        raise ValueError(f"k: head dim {k_shape[3]} differs from q's {D}")
    if v_shape[2] != Lk:
        raise ValueError(f"v: sequence length {v_shape[2]} differs from k's {Lk}")
    limit = _C.ATTENTION_MAX_HEAD_DIM
    if not 1 <= D <= limit:
        raise ValueError(f"q: head dim {D} is outside [1, {limit}]")
    if not 1 <= Dv <= limit:
        raise ValueError(f"v: head dim {Dv} is outside [1, {limit}]")
    return _Dims(B, Hq, Hkv, Lq, Lk, D, Dv)


def _check_mask_shape(shape: tuple[int, ...], dims: _Dims) -> tuple[int, int, int, int]:
    """The mask's shape, right-aligned to 4 dimensions, if it broadcasts to (B, Hq, Lq, Lk)."""
    full = (dims.batch, dims.q_heads, dims.q_len, dims.kv_len)
    if len(shape) > 4:
        raise ValueError(f"attn_mask: expected at most 4 dimensions, got {len(shape)}")
    s4 = (1,) * (4 - len(shape)) + tuple(int(d) for d in shape)
    if any(s not in (1, f) for s, f in zip(s4, full, strict=True)):
        raise ValueError(f"attn_mask: shape {shape} does not broadcast to (B, Hq, Lq, Lk) = {full}")
    return s4[0], s4[1], s4[2], s4[3]


def _real(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    return float(x)


class _Scalars(NamedTuple):
    causal: bool
    top_left: bool
    scale: float | None  # None: 1 / sqrt(D)
    softcap: float
    return_lse: bool


def _scalars(
    is_causal: Any, causal_align: Any, scale: Any, softcap: Any, return_lse: Any
) -> _Scalars:
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"is_causal: expected a bool, got {type(is_causal).__name__}")
    if not isinstance(causal_align, str) or causal_align not in _ALIGNS:
        raise ValueError(f"causal_align: expected one of {_ALIGNS}, got {causal_align!r}")
    scale_f = None
    if scale is not None:
        scale_f = _real(scale, "scale")
        if not math.isfinite(scale_f) or abs(scale_f) > _FLOAT32_MAX:
            raise ValueError(f"scale: must be finite, got {scale_f}")
    softcap_f = _real(softcap, "softcap")
    if not math.isfinite(softcap_f) or softcap_f < 0:
        raise ValueError(f"softcap: must be finite and >= 0, got {softcap_f}")
    lo, hi = _C.ATTENTION_MIN_SOFTCAP, _C.ATTENTION_MAX_SOFTCAP
    if softcap_f != 0 and not lo <= softcap_f <= hi:
        raise ValueError(f"softcap: must be 0 (off) or in [{lo:.3g}, {hi:.3g}], got {softcap_f}")
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse: expected a bool, got {type(return_lse).__name__}")
    return _Scalars(
        bool(is_causal), causal_align == "top_left", scale_f, softcap_f, bool(return_lse)
    )


def _scale(s: _Scalars, dims: _Dims) -> float:
    return 1.0 / math.sqrt(dims.head_dim) if s.scale is None else s.scale


def _causal_offset(s: _Scalars, dims: _Dims) -> int:
    """Query i sees key j iff j <= i + offset."""
    return 0 if s.top_left else dims.kv_len - dims.q_len


def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    attn_mask: Any = None,
    is_causal: bool = False,
    causal_align: str = "top_left",
    scale: float | None = None,
    softcap: float = 0.0,
    out: Any = None,
    return_lse: bool = False,
    precision: str = "fp32",
) -> Any:
    """Scaled dot-product attention, fused (FlashAttention-style online softmax, O(L) memory).

    ``out[b, h, i] = Σ_j softmax_j(s[b, h, i, j]) · v[b, h // (Hq // Hkv), j]`` with the scores
    ``s = scale · q[b, h, i] · k[b, h // (Hq // Hkv), j]``, then ``softcap · tanh(s / softcap)``
    (if ``softcap > 0``), then the mask (added, or ``-inf`` where excluded).

    Args:
        q: ``(B, Hq, Lq, D)`` float32 queries (numpy array or torch CPU tensor); or, on the
            GPU, a torch CUDA tensor or CuPy array of float32, float16 or bfloat16 (k, v, out,
            attn_mask on the same device; the result is enqueued on the caller's current
            stream; float16/bfloat16 run on tensor cores with float32 accumulation).
        k: ``(B, Hkv, Lk, D)`` float32 keys; ``Hq % Hkv == 0`` (GQA; ``Hkv = 1`` is MQA):
            query head ``h`` reads kv head ``h // (Hq // Hkv)``.
        v: ``(B, Hkv, Lk, Dv)`` float32 values; ``Dv`` may differ from ``D``; ``1 <= D, Dv <=
            256`` (``mmfast._C.ATTENTION_MAX_HEAD_DIM``).
        attn_mask: ``None``, or an array broadcastable to ``(B, Hq, Lq, Lk)``: bool (True =
            attend) or float32 (added to the scores; ``-inf`` excludes; on CUDA also float16 /
            bfloat16, converted to float32). Never copied to the broadcast shape.
        is_causal: query ``i`` sees key ``j`` only if ``j <= i + offset`` (combined with
            ``attn_mask`` if both are given, as ONNX Attention does).
        causal_align: ``"top_left"`` (offset 0: PyTorch's ``is_causal``, ONNX Attention without
            past) or ``"bottom_right"`` (offset ``Lk - Lq``: FlashAttention, KV-cache decoding;
            with ``Lq > Lk`` the first ``Lq - Lk`` queries see no key).
        scale: multiplies ``q·k``; default ``1 / sqrt(D)``; any finite value (negative too).
        softcap: ``s > 0`` applies ``s · tanh(x / s)`` to the scaled scores, before the mask;
            0 turns it off.
        out: optional ``(B, Hq, Lq, Dv)`` array of the same kind and dtype as ``q`` to write
            to; must not overlap the inputs.
        return_lse: also return ``lse``, ``(B, Hq, Lq)`` float32: the natural-log-sum-exp of
            the final (scaled, softcapped, masked) scores of each query.
        precision: ``"fp32"`` (default) or ``"bf16"`` (CPU only): q, k, v rounded to bfloat16
            (nearest even; they may then also be bfloat16 arrays of ml_dtypes or torch),
            float32 accumulation, softmax and output (float32). On the AVX512-BF16 kernel where
            the CPU has it (``mmfast._C.bf16_native()``; P is then rounded to bf16 for P·V too),
            else the float32 kernel on the rounded inputs; both within the bound derived in
            csrc/attention/attention_cpu_bf16.h.

    Returns:
        ``out`` ``(B, Hq, Lq, Dv)`` in q's dtype, of the kind ``q`` is (numpy, torch, CuPy),
        or ``(out, lse)`` (lse float32) with ``return_lse=True``.

    A query whose keys are all masked (by the mask, the causal rule, or ``Lk = 0``) gets an
    output row of zeros and ``lse = -inf``, never NaN (PyTorch and ONNX Attention give 0 too).
    ``Lq = 0`` (or ``B = 0``, ``Hq = 0``) gives empty results. ``D``, ``Dv`` must be >= 1.

    Raises:
        TypeError: an argument of the wrong type or dtype (names the argument).
        ValueError: wrong ndim, head counts that don't divide, mismatched batch / head dim /
            sequence length, a mask that doesn't broadcast, a non-finite ``scale``, a negative
            or non-finite ``softcap``, an unknown ``causal_align``, a bad ``out``, an unknown
            ``precision``.
    """
    s = _scalars(is_causal, causal_align, scale, softcap, return_lse)
    bf16 = check_precision(precision) == "bf16"
    if is_cuda_array(q):
        if bf16:
            raise ValueError(
                "precision: 'bf16' is for the CPU kernels; on the GPU pass bfloat16 arrays instead"
            )
        return _attention_cuda(q, k, v, attn_mask, out, s)
    return _attention_cpu(q, k, v, attn_mask, out, s, bf16)


# ---- CPU: numpy arrays and torch CPU tensors -> mmfast._C ---------------------------------------


def _kernel_layout(a: np.ndarray) -> np.ndarray:
    """`a` itself when the kernel can read it (aligned, contiguous last dim, strides in whole
    floats), else a C-contiguous copy."""
    ok = (
        a.flags.aligned
        and (a.shape[-1] <= 1 or a.strides[-1] == a.itemsize)
        and all(st % a.itemsize == 0 for st in a.strides)
    )
    return a if ok else np.array(a, order="C")


def _attention_cpu(
    q: Any, k: Any, v: Any, attn_mask: Any, out: Any, s: _Scalars, bf16: bool = False
) -> Any:
    host = host_array_bf16 if bf16 else host_array
    qa, kind = host(q, "q")
    ka, k_kind = host(k, "k")
    va, v_kind = host(v, "v")
    for name, other in (("k", k_kind), ("v", v_kind)):
        if other != kind:
            raise TypeError(f"{name}: expected a {kind.framework} array like q")
    dims = _dims(qa.shape, ka.shape, va.shape)

    mask4: np.ndarray | None = None
    if attn_mask is not None:
        ma, _ = to_numpy(attn_mask, "attn_mask")
        if ma.dtype != np.bool_ and ma.dtype != np.float32:
            raise TypeError(f"attn_mask: expected bool or float32, got {ma.dtype}")
        _check_mask_shape(ma.shape, dims)
        # A view with zero strides where it broadcasts: never materialised.
        full = (dims.batch, dims.q_heads, dims.q_len, dims.kv_len)
        if not ma.flags.aligned or any(st % ma.itemsize for st in ma.strides):
            ma = np.array(ma, order="C")
        mask4 = np.broadcast_to(ma, full)

    oshape = (dims.batch, dims.q_heads, dims.q_len, dims.v_head_dim)
    undecided = False
    if out is None:
        oa = np.empty(oshape, dtype=np.float32)
    else:
        oa = host_out(out, kind, oshape, "q")
        inputs = [("q", qa), ("k", ka), ("v", va)]
        if mask4 is not None:  # the kernel reads the mask while it writes out
            inputs.append(("attn_mask", mask4))
        for name, a in inputs:
            shared = overlap(oa, a)
            if shared:
                raise ValueError(f"out: overlaps {name}")
            undecided |= shared is None
    lse = np.empty(oshape[:3], dtype=np.float32) if s.return_lse else None

    if oa.size or (lse is not None and lse.size):
        # Where an overlap could not be ruled out cheaply, the kernel writes a fresh buffer.
        o_k = np.empty(oshape, np.float32) if undecided else _kernel_layout(oa)
        kernel = _C.attention
        if bf16 and _C.bf16_native():
            kernel = _C.attention_bf16
        elif bf16:  # no AVX512-BF16: the rounded inputs, then the float32 kernel
            qa, ka, va = (_C.round_bf16(np.ascontiguousarray(a)) for a in (qa, ka, va))
        kernel(
            _kernel_layout(qa),
            _kernel_layout(ka),
            _kernel_layout(va),
            o_k,
            mask4,
            lse,
            s.causal,
            _causal_offset(s, dims),
            _scale(s, dims),
            s.softcap,
        )
        if o_k is not oa:
            oa[...] = o_k
    result = from_numpy(oa, kind) if out is None else out
    if lse is not None:
        return result, from_numpy(lse, kind)
    return result


# ---- CUDA: torch CUDA tensors and CuPy arrays -> mmfast._C_cuda ----------------------------------


def _cuda_mask(
    attn_mask: Any, qa: CudaArray, dims: _Dims
) -> tuple[CudaArray, str, tuple[int, int, int, int]]:
    """The mask as the kernel reads it (bool, or float32 converted from a 16-bit float), its
    kind and its strides over (B, Hq, Lq, Lk), 0 where it broadcasts."""
    ma = cuda_array(attn_mask, "attn_mask")
    same_place(ma, qa, "attn_mask", "q")
    if ma.dtype == "bool":
        kind = "boolean"
    elif ma.dtype in ("float32", "float16", "bfloat16"):
        kind = "additive"
        if ma.dtype != "float32":  # the kernel adds float32 values
            if ma.framework == "torch":
                conv = ma.obj.float()
            else:
                with sys.modules["cupy"].cuda.Device(ma.device):
                    conv = ma.obj.astype("float32")
            ma = cuda_array(conv, "attn_mask")
    else:
        raise TypeError(f"attn_mask: expected bool or a float dtype, got {ma.dtype}")
    s4 = _check_mask_shape(ma.shape, dims)
    full = (dims.batch, dims.q_heads, dims.q_len, dims.kv_len)
    strides = (0,) * (4 - len(ma.shape)) + ma.strides
    # a broadcast dimension is read with stride 0
    b, h, i, j = (
        0 if n == 1 and f != 1 else st for n, f, st in zip(s4, full, strides, strict=True)
    )
    return ma, kind, (b, h, i, j)


def _attention_cuda(q: Any, k: Any, v: Any, attn_mask: Any, out: Any, s: _Scalars) -> Any:
    qa, ka, va = cuda_array(q, "q"), cuda_array(k, "k"), cuda_array(v, "v")
    mod = cuda_kernels()
    for name, a in (("k", ka), ("v", va)):
        same_place(a, qa, name, "q")
    dtype = cuda_dtype(qa, "q")
    for name, a in (("k", ka), ("v", va)):
        if a.dtype != qa.dtype:
            raise TypeError(f"{name}: dtype {a.dtype} differs from q's {qa.dtype}")
    dims = _dims(qa.shape, ka.shape, va.shape)
    grid = _C.CUDA_MAX_GRID_YZ
    if dims.batch > grid or dims.q_heads > grid:
        raise ValueError(
            f"q: batch {dims.batch} and heads {dims.q_heads} must each be at most {grid} on CUDA"
        )
    # The kernels read rows with unit stride along D; anything else is copied once.
    qa, ka, va = (
        a if a.shape[3] <= 1 or a.strides[3] == 1 else cuda_contiguous(a, n)
        for n, a in (("q", qa), ("k", ka), ("v", va))
    )
    mask: CudaArray | None = None
    mask_kind, mask_strides = "none", (0, 0, 0, 0)  # (B, Hq, Lq, Lk) element strides
    if attn_mask is not None:
        mask, mask_kind, mask_strides = _cuda_mask(attn_mask, qa, dims)

    oshape = (dims.batch, dims.q_heads, dims.q_len, dims.v_head_dim)
    oa = (
        cuda_array(cuda_empty(qa, oshape, qa.dtype), "out")
        if out is None
        else cuda_out(out, qa, oshape, qa.dtype)
    )
    if oa.strides[3] != 1 and dims.v_head_dim > 1:
        raise ValueError("out: the last dimension must be contiguous")
    if out is not None:
        named = [("q", qa), ("k", ka), ("v", va)] + ([("attn_mask", mask)] if mask else [])
        for name, a in named:
            if overlaps(oa, a):
                raise ValueError(f"out: overlaps {name}")
    lse = cuda_array(cuda_empty(qa, oshape[:3], "float32"), "lse") if s.return_lse else None

    if dims.batch * dims.q_heads * dims.q_len:
        mod.attention(
            q=qa.ptr,
            k=ka.ptr,
            v=va.ptr,
            out=oa.ptr,
            lse=lse.ptr if lse is not None else 0,
            mask=mask.ptr if mask is not None else 0,
            mask_kind=getattr(mod.MaskKind, mask_kind),
            dtype=getattr(mod.DType, dtype),
            **dims._asdict(),
            q_stride=qa.strides[:3],
            k_stride=ka.strides[:3],
            v_stride=va.strides[:3],
            out_stride=oa.strides[:3],
            mask_stride=mask_strides,
            scale=_scale(s, dims),
            softcap=s.softcap,
            causal=s.causal,
            causal_offset=_causal_offset(s, dims),
            device=qa.device,
            stream=cuda_stream(qa),
        )
    del mask  # kept alive through the call: it may be a converted copy
    result = oa.obj if out is None else out
    if lse is not None:
        return result, lse.obj
    return result
