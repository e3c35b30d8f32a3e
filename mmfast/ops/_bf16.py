"""precision="bf16" for the CPU ops (conv2d, attention): the argument check and the inputs.

bf16 here means: every input of the products (x and the weights; q, k, v) rounded to bfloat16
(round to nearest, ties to even), float32 accumulation, float32 outputs. mmfast._C runs it on
AVX512-BF16 kernels where the CPU has them (``mmfast._C.bf16_native()``); elsewhere the same
rounding is applied and the float32 kernels run (products of bf16 values are exact in float32,
so both obey the same error bound; see csrc/conv2d/conv2d_cpu_bf16.h and
csrc/attention/attention_cpu_bf16.h).

Inputs may also be bfloat16 already: numpy arrays of ml_dtypes' ``bfloat16`` (recognised by
the dtype's name: ml_dtypes is never imported here) or torch CPU ``bfloat16`` tensors. They are
widened to float32 exactly; the bf16 rounding then leaves them unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import ArrayKind, host_array

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: Any) -> str:
    """`precision` if it is one of PRECISIONS; ValueError naming it otherwise."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return precision


def _is_bf16(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return str(dtype) in ("bfloat16", "torch.bfloat16")


def host_array_bf16(x: Any, name: str, ndim: int | None = None) -> tuple[np.ndarray, ArrayKind]:
    """host_array() for precision="bf16": float32 as is, bfloat16 widened to float32 (exact)."""
    if _is_bf16(x):
        if isinstance(x, np.ndarray):  # ml_dtypes.bfloat16: numpy knows the cast
            x32, kind = x.astype(np.float32), ArrayKind("numpy")
            return host_array(x32, name, ndim)[0], kind
        a, _ = host_array(x.float(), name, ndim)  # a torch CPU tensor (never imported here)
        return a, ArrayKind("torch")
    return host_array(x, name, ndim)
