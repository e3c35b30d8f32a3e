"""Checks of a caller's numeric arguments, shared by the pipelines and the index, and the
one-line form of an error message that the CLI prints.

Each check returns the value as a plain Python number or raises ValueError naming the
argument. A bool is refused where a number is expected (``k=True`` is a mistake, not 1); numpy
scalars are taken (``k=np.int64(3)``, e.g. from an argmax, is 3).
"""

from __future__ import annotations

import math
import numbers

__all__ = ["finite_float", "one_line", "positive_int"]


def positive_int(name: str, value: object, *, at_most: int | None = None) -> int:
    """`value` as an int in 1..at_most (no upper limit if None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    n = int(value)
    if n < 1:
        raise ValueError(f"{name}: expected a positive int, got {n}")
    if at_most is not None and n > at_most:
        raise ValueError(f"{name}: at most {at_most}, got {n}")
    return n


def finite_float(name: str, value: object, *, lo: float, hi: float) -> float:
    """`value` as a float in [lo, hi] (NaN and inf refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or not lo <= x <= hi:
        raise ValueError(f"{name}: expected a number in [{lo:g}, {hi:g}], got {x!r}")
    return x


def one_line(e: BaseException) -> str:
    """An exception's message on one line (ONNX Runtime's and numpy's may span several)."""
    return " ".join(str(e).split()) or type(e).__name__
