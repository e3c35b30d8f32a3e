"""Host arrays for mmfast.ops: numpy arrays in and out, torch CPU tensors zero-copy.

torch is never imported here: a tensor is recognised by its type's module, converted with
DLPack (``np.from_dlpack``, which shares memory), and results are handed back through
``torch.from_dlpack`` taken from ``sys.modules`` (torch is loaded if the caller passed a tensor).
The checks every op makes of its inputs and of a caller's ``out`` live here, once.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ArrayKind",
    "aligned",
    "from_numpy",
    "host_array",
    "host_out",
    "overlap",
    "to_numpy",
]

# np.shares_memory solves a small integer program exactly; on crafted interleaved views it ran
# for 11 s (a numpy-level pair: 113 s). Past this much work the answer is "undecided".
_OVERLAP_MAX_WORK = 10_000
_TooHard = getattr(getattr(np, "exceptions", np), "TooHardError", RuntimeError)


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


def host_array(x: Any, name: str, ndim: int | None = None) -> tuple[np.ndarray, ArrayKind]:
    """A float32 numpy view of `x` (numpy array or torch CPU tensor) with `ndim` dimensions if
    given; TypeError / ValueError naming `name` otherwise."""
    a, kind = to_numpy(x, name)
    if a.dtype != np.float32:
        raise TypeError(f"{name}: expected float32, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got {a.ndim} {a.shape}")
    return a, kind


def host_out(out: Any, kind: ArrayKind, shape: tuple[int, ...], like: str) -> np.ndarray:
    """The caller's ``out``: the same kind as the input named `like`, float32, of `shape`,
    writable. (Whether it may overlap the inputs is each op's own rule.)"""
    oa, okind = to_numpy(out, "out")
    if okind != kind:
        raise TypeError(f"out: expected a {kind.framework} array like {like}")
    if oa.dtype != np.float32:
        raise TypeError(f"out: expected float32, got {oa.dtype}")
    if oa.shape != shape:
        raise ValueError(f"out: expected shape {shape}, got {oa.shape}")
    if not oa.flags.writeable:
        raise ValueError("out: array is read-only")
    return oa


def overlap(a: np.ndarray, b: np.ndarray) -> bool | None:
    """True if `a` and `b` share memory, False if they do not, None if that could not be decided
    within a bounded amount of work (callers then compute into a fresh buffer and copy)."""
    if not np.may_share_memory(a, b):  # bounds only: cheap
        return False
    try:
        # (numpy's stub types max_work as its special values only; any bound is documented)
        shares: Any = np.shares_memory
        return bool(shares(a, b, max_work=_OVERLAP_MAX_WORK))
    except _TooHard:
        return None


def aligned(a: np.ndarray) -> np.ndarray:
    """`a`, or an aligned copy when its data is not aligned to its item size (a view at an odd
    byte offset of a buffer): the kernels load whole floats."""
    return a if a.flags.aligned else a.copy()
