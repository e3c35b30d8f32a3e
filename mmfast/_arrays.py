"""Array interchange for mmfast.ops: numpy arrays in and out, torch CPU tensors zero-copy.

torch is never imported here: a tensor is recognised by its type's module, converted with
DLPack (``np.from_dlpack``, which shares memory), and results are handed back through
``torch.from_dlpack`` taken from ``sys.modules`` (torch is loaded if the caller passed a tensor).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ArrayKind", "from_numpy", "to_numpy"]


@dataclass(frozen=True)
class ArrayKind:
    """What the caller passed, so the result can be returned as the same kind."""

    framework: str  # "numpy" or "torch"


def _is_torch_tensor(x: object) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "__dlpack__")


def to_numpy(x: Any, name: str) -> tuple[np.ndarray, ArrayKind]:
    """Return a numpy view of `x` (no copy) and its kind. TypeError names `name` otherwise."""
    if isinstance(x, np.ndarray):
        return x, ArrayKind("numpy")
    if _is_torch_tensor(x):
        device = getattr(x, "device", None)
        if getattr(device, "type", "cpu") != "cpu":
            raise TypeError(
                f"{name}: tensor is on {device}; this op takes CPU tensors "
                "(CUDA tensors go to the CUDA kernels)"
            )
        if getattr(x, "requires_grad", False):
            x = x.detach()
        return np.from_dlpack(x), ArrayKind("torch")
    raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")


def from_numpy(a: np.ndarray, kind: ArrayKind) -> Any:
    """Return `a` as the kind the caller passed in (sharing memory)."""
    if kind.framework == "torch":
        return sys.modules["torch"].from_dlpack(a)
    return a
