"""Checks of a configuration dataclass's fields (``TrainArgs``, ``ShapesConfig``), in one place
for the Python API and the command line.

A bad value raises :class:`FieldError`, a ValueError naming the field as Python spells it
(``epochs must be at least 1, got 0``); the CLI names its option instead
(``--epochs must be at least 1, got 0``) through :meth:`FieldError.message`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

__all__ = ["FieldError", "at_least", "finite_at_least", "in_range"]

_NO_VALUE = object()  # an error about several fields together quotes no value


class FieldError(ValueError):
    """Field(s) `names` break `rule`; `value` is what was given."""

    def __init__(self, names: Sequence[str], rule: str, value: object = _NO_VALUE) -> None:
        self.names, self.rule, self.value = tuple(names), rule, value
        super().__init__(self.message())

    def message(self, spell: Callable[[str], str] = str, given: object = _NO_VALUE) -> str:
        """The message with each field's name passed through `spell`, quoting `given` (e.g. the
        option's text before it was converted) instead of the field's value if passed."""
        text = f"{' + '.join(spell(n) for n in self.names)} {self.rule}"
        if self.value is _NO_VALUE:
            return text
        return f"{text}, got {self.value if given is _NO_VALUE else given!r}"


def _integer(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FieldError([name], "must be an integer", value)
    return int(value)


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def at_least(name: str, value: object, lo: int) -> None:
    """An integer >= lo; None (the default applies) passes."""
    if value is not None and _integer(name, value) < lo:
        raise FieldError([name], f"must be at least {lo}", value)


def in_range(
    name: str, value: object, lo: float, hi: float, *, unit: str = "", open_hi: bool = False
) -> None:
    """An integer in lo..hi if both are ints; else a number in [lo, hi], or [lo, hi) if
    `open_hi` (NaN fails either)."""
    if isinstance(lo, int) and isinstance(hi, int):
        ok = lo <= _integer(name, value) <= hi
        rule = f"must be {lo}..{hi}{unit}"
    else:
        x = float(value) if _real(value) else math.nan  # type: ignore[arg-type]
        ok = lo <= x < hi if open_hi else lo <= x <= hi
        rule = f"must be in [{lo:g}, {hi:g}{')' if open_hi else ']'}"
    if not ok:
        raise FieldError([name], rule, value)


def finite_at_least(name: str, value: object, lo: float, *, strict: bool = False) -> None:
    """A finite number >= lo (> lo if `strict`)."""
    x = float(value) if _real(value) else math.nan  # type: ignore[arg-type]
    ok = math.isfinite(x) and (x > lo if strict else x >= lo)
    if not ok:
        raise FieldError([name], f"must be a finite number {'>' if strict else '>='} {lo:g}", value)
