"""softmax / log_softmax: argument checks and layout here, compute in C++
(csrc/softmax/softmax_cpu.cpp). CPU only: numpy arrays and torch CPU tensors."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from .. import _C
from ._arrays import aligned, from_numpy, host_array, host_out, overlap

__all__ = ["log_softmax", "softmax"]

T = TypeVar("T")


def _softmax(x: Any, axis: int, out: Any, log: bool) -> Any:
    xa, kind = host_array(x, "x")
    if xa.ndim == 0:
        raise ValueError("x: expected at least 1 dimension, got a scalar")
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise TypeError(f"axis: expected an int, got {type(axis).__name__}")
    if not -xa.ndim <= axis < xa.ndim:
        raise ValueError(f"axis: {axis} is out of range for {xa.ndim} dimensions")
    axis = int(axis) % xa.ndim

    undecided = False
    if out is None:
        oa = np.empty(xa.shape, dtype=np.float32)
    else:
        oa = host_out(out, kind, xa.shape, "x")
        shared = overlap(oa, xa)  # disjoint bounds (the usual case) decide it cheaply
        if shared is not False and (
            oa.__array_interface__["data"] == xa.__array_interface__["data"]
            and oa.strides == xa.strides
        ):
            shared = False  # the very same array: in place
        if shared:
            raise ValueError("out: overlaps x partially (in-place needs the very same array)")
        undecided = shared is None

    if xa.size == 0:
        return from_numpy(oa, kind) if out is None else out

    # The kernel works on rows of a 2-D array whose last dim is contiguous: move `axis` last
    # and make the copies only when the layout needs them.
    x2 = aligned(np.ascontiguousarray(np.moveaxis(xa, axis, -1))).reshape(-1, xa.shape[axis])
    o_moved = np.moveaxis(oa, axis, -1)
    # A fresh buffer where `out` is strided, not aligned, or may overlap x (undecided).
    direct = o_moved.flags.c_contiguous and o_moved.flags.aligned and not undecided
    o2 = o_moved.reshape(-1, xa.shape[axis]) if direct else np.empty_like(x2)
    _C.softmax(x2, o2, log)
    if not direct:
        o_moved[...] = o2.reshape(o_moved.shape)
    return from_numpy(oa, kind) if out is None else out


def softmax(x: T, axis: int = -1, *, out: Any = None) -> T:
    """Softmax along `axis` of a float32 array: ``exp(x - max) / sum(exp(x - max))``.

    x: float32 array of any shape (numpy or torch CPU tensor); out: optional array of the same
    shape, kind and dtype (may be x itself). A row that is all ``-inf`` gives NaN, as in
    numpy/scipy/torch.
    """
    result: T = _softmax(x, axis, out, log=False)
    return result


def log_softmax(x: T, axis: int = -1, *, out: Any = None) -> T:
    """``log(softmax(x))`` along `axis`, computed as ``x - max - log(sum(exp(x - max)))``."""
    result: T = _softmax(x, axis, out, log=True)
    return result
