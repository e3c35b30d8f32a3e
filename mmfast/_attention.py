"""Fused scaled-dot-product attention over mmfast._C (argument checks and layout here, compute
in C++: csrc/kernels/attention.cpp)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _C
from ._arrays import ArrayKind, from_numpy, to_numpy
from ._cuda_ops import cuda_attention, is_cuda_array

__all__ = ["attention"]

_MAX_HEAD_DIM = 256
_ALIGNS = ("top_left", "bottom_right")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _float32(x: Any, name: str) -> tuple[np.ndarray, ArrayKind]:
    a, kind = to_numpy(x, name)
    if a.dtype != np.float32:
        raise TypeError(f"{name}: expected float32, got {a.dtype}")
    return a, kind


def _dims(
    q_shape: tuple[int, ...], k_shape: tuple[int, ...], v_shape: tuple[int, ...]
) -> tuple[int, int, int, int, int, int, int]:
    """(B, Hq, Hkv, Lq, Lk, D, Dv) after the shape checks both devices share."""
    for name, shape in (("q", q_shape), ("k", k_shape), ("v", v_shape)):
        if len(shape) != 4:
            raise ValueError(f"{name}: expected 4 dimensions (B, H, L, D), got {len(shape)}")
    B, Hq, Lq, D = (int(d) for d in q_shape)  # (B, Hq, Lq, D)
    _, Hkv, Lk, _ = (int(d) for d in k_shape)  # (B, Hkv, Lk, D)
    Dv = int(v_shape[3])  # v: (B, Hkv, Lk, Dv)
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
    if not 1 <= D <= _MAX_HEAD_DIM:
        raise ValueError(f"q: head dim {D} is outside [1, {_MAX_HEAD_DIM}]")
    if not 1 <= Dv <= _MAX_HEAD_DIM:
        raise ValueError(f"v: head dim {Dv} is outside [1, {_MAX_HEAD_DIM}]")
    return B, Hq, Hkv, Lq, Lk, D, Dv


def _kernel_layout(a: np.ndarray) -> np.ndarray:
    """`a` itself when the kernel can read it (contiguous last dim, strides in whole floats),
    else a C-contiguous copy."""
    ok = (a.shape[-1] <= 1 or a.strides[-1] == a.itemsize) and all(
        s % a.itemsize == 0 for s in a.strides
    )
    return a if ok else np.ascontiguousarray(a)


def _real(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a real number, got {type(x).__name__}")
    return float(x)


def _check_scalars(
    is_causal: Any, causal_align: Any, scale: Any, softcap: Any, return_lse: Any
) -> None:
    if not isinstance(is_causal, (bool, np.bool_)):
        raise TypeError(f"is_causal: expected a bool, got {type(is_causal).__name__}")
    if not isinstance(causal_align, str) or causal_align not in _ALIGNS:
        raise ValueError(f"causal_align: expected one of {_ALIGNS}, got {causal_align!r}")
    if scale is not None:
        scale_f = _real(scale, "scale")
        if not math.isfinite(scale_f) or abs(scale_f) > _FLOAT32_MAX:
            raise ValueError(f"scale: must be finite, got {scale_f}")
    softcap_f = _real(softcap, "softcap")
    if not math.isfinite(softcap_f) or softcap_f < 0:
        raise ValueError(f"softcap: must be finite and >= 0, got {softcap_f}")
    if not isinstance(return_lse, (bool, np.bool_)):
        raise TypeError(f"return_lse: expected a bool, got {type(return_lse).__name__}")


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
            256``.
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
            or non-finite ``softcap``, an unknown ``causal_align``, a bad ``out``.
    """
    _check_scalars(is_causal, causal_align, scale, softcap, return_lse)
    if is_cuda_array(q):
        return cuda_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dims_of=_dims,
            is_causal=bool(is_causal),
            causal_offset_of=lambda lq, lk: 0 if causal_align == "top_left" else lk - lq,
            scale=None if scale is None else float(scale),
            softcap=float(softcap),
            out=out,
            return_lse=bool(return_lse),
        )
    softcap_f = float(softcap)
    qa, kind = _float32(q, "q")
    ka, k_kind = _float32(k, "k")
    va, v_kind = _float32(v, "v")
    for name, other in (("k", k_kind), ("v", v_kind)):
        if other != kind:
            raise TypeError(f"{name}: expected a {kind.framework} array like q")
    B, Hq, _, Lq, Lk, D, Dv = _dims(qa.shape, ka.shape, va.shape)

    scale_f = 1.0 / math.sqrt(D) if scale is None else float(scale)

    full = (B, Hq, Lq, Lk)
    mask4: np.ndarray | None = None
    if attn_mask is not None:
        ma, _ = to_numpy(attn_mask, "attn_mask")
        if ma.dtype != np.bool_ and ma.dtype != np.float32:
            raise TypeError(f"attn_mask: expected bool or float32, got {ma.dtype}")
        if ma.ndim > 4:
            raise ValueError(f"attn_mask: expected at most 4 dimensions, got {ma.ndim}")
        try:
            # A view with zero strides where it broadcasts: never materialised.
            mask4 = np.broadcast_to(ma, full)
        except ValueError:
            raise ValueError(
                f"attn_mask: shape {ma.shape} does not broadcast to (B, Hq, Lq, Lk) = {full}"
            ) from None
        if any(s % ma.itemsize for s in mask4.strides):
            mask4 = np.broadcast_to(np.ascontiguousarray(ma), full)

    oshape = (B, Hq, Lq, Dv)
    if out is None:
        oa = np.empty(oshape, dtype=np.float32)
    else:
        oa, okind = to_numpy(out, "out")
        if okind != kind:
            raise TypeError(f"out: expected a {kind.framework} array like q")
        if oa.dtype != np.float32:
            raise TypeError(f"out: expected float32, got {oa.dtype}")
        if oa.shape != oshape:
            raise ValueError(f"out: shape {oa.shape} is not (B, Hq, Lq, Dv) = {oshape}")
        if not oa.flags.writeable:
            raise ValueError("out: array is read-only")
        for name, a in (("q", qa), ("k", ka), ("v", va)):
            if np.shares_memory(oa, a):
                raise ValueError(f"out: overlaps {name}")
    lse = np.empty((B, Hq, Lq), dtype=np.float32) if return_lse else None

    if oa.size or (lse is not None and lse.size):
        o_k = _kernel_layout(oa)
        _C.attention(
            _kernel_layout(qa),
            _kernel_layout(ka),
            _kernel_layout(va),
            o_k,
            mask4,
            lse,
            bool(is_causal),
            0 if causal_align == "top_left" else Lk - Lq,
            scale_f,
            softcap_f,
        )
        if o_k is not oa:
            oa[...] = o_k
    result = from_numpy(oa, kind) if out is None else out
    if lse is not None:
        return result, from_numpy(lse, kind)
    return result
