"""The one family of argument checks: each raises ``ValueError`` naming the argument.

Every configuration, chapter parameter, stage argument and intervention checks its values
through these, before any work, so a bad value reads the same everywhere:
``finetune.lr must be a finite number > 0, got -0.001``.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Iterable

__all__ = ["check_choice", "check_float", "check_fraction", "check_int"]


def _bounds(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi:g}"
    return ""


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int (a Python or NumPy integer; never a bool or a float) in ``[lo, hi]``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ValueError(f"{name} must be an int{_bounds(lo, hi)}, got {value!r}")
    return number


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float (an int is fine; a bool is not) within the bounds."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) or type(value).__name__.startswith("float")
    number = float(value) if ok else math.nan
    bad = (not math.isfinite(number)
           or (lo is not None and (number < lo or (lo_open and number == lo)))
           or (hi is not None and (number > hi or (hi_open and number == hi))))
    if bad:
        raise ValueError(f"{name} must be a finite number{_bounds(lo, hi, lo_open, hi_open)}, got {value!r}")
    return number


def check_fraction(name: str, value: Any) -> float:
    """A finite number in [0, 1]."""
    return check_float(name, value, 0.0, 1.0)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices or isinstance(value, bool) and not any(c is value for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
