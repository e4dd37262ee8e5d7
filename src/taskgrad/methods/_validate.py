"""Hyper-parameter checks at construction: each error names the parameter, its valid range and
the value it got."""

from __future__ import annotations

import math
import numbers

__all__ = ["check_choice", "check_int", "check_real"]


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"


def check_real(
    owner: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float, if it is a finite real number in the given range (else ValueError
    or TypeError naming ``owner``'s parameter ``name`` and the range)."""
    rng = _range(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number in {rng}, got {value!r}.")
    v = float(value)
    bad = not math.isfinite(v)
    bad = bad or (low is not None and (v < low or (low_open and v == low)))
    bad = bad or (high is not None and (v > high or (high_open and v == high)))
    if bad:
        raise ValueError(f"{owner}: {name} must be a finite number in {rng}, got {value!r}.")
    return v


def check_int(owner: str, name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an int in [low, high] (a bool or a float is refused)."""
    rng = _range(low, high, False, False).replace("-inf", "-∞").replace("inf", "∞")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int in {rng}, got {value!r}.")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{owner}: {name} must be an int in {rng}, got {value!r}.")
    return v


def check_choice(owner: str, name: str, value: object, choices: tuple[object, ...]) -> object:
    """``value`` if it is one of ``choices``."""
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
    return value
