"""Hyper-parameter checks at construction: each error names the parameter, its valid range and
the value it got.
"""

from __future__ import annotations

import math
import numbers
from typing import TypeVar

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_real",
    "check_vector",
    "interval",
    "outside",
]

_C = TypeVar("_C")


def interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """The interval as text, e.g. ``(0, 1]`` or ``[0, inf)`` (None: unbounded on that side)."""
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{lo}, {hi}{right}"


def outside(
    v: float, low: float | None, high: float | None, low_open: bool, high_open: bool
) -> bool:
    """Whether v lies outside the interval (an open end excludes the bound itself)."""
    below = low is not None and (v < low or (low_open and v == low))
    return below or (high is not None and (v > high or (high_open and v == high)))


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
    or TypeError naming ``owner``'s parameter ``name`` and the range).
    """
    rng = interval(low, high, low_open, high_open)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number in {rng}, got {value!r}.")
    v = float(value)
    if not math.isfinite(v) or outside(v, low, high, low_open, high_open):
        raise ValueError(f"{owner}: {name} must be a finite number in {rng}, got {value!r}.")
    return v


def check_int(
    owner: str, name: str, value: object, *, low: int | None = None, high: int | None = None
) -> int:
    """``value`` if it is an int in [low, high] (a bool or a float is refused)."""
    rng = interval(low, high, False, False).replace("-inf", "-∞").replace("inf", "∞")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int in {rng}, got {value!r}.")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        raise ValueError(f"{owner}: {name} must be an int in {rng}, got {value!r}.")
    return v


def check_choice(owner: str, name: str, value: object, choices: tuple[_C, ...]) -> _C:
    """``value`` if it is one of ``choices`` (typed as the choices are)."""
    if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
        raise ValueError(
            f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}."
        )
    if value not in choices:
        raise ValueError(
            f"{owner}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}."
        )
    return value


def check_bool(owner: str, name: str, value: object) -> bool:
    """``value`` if it is True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}.")
    return value


def check_vector(
    owner: str, name: str, value: object, *, nonnegative: bool = False
) -> Tensor | None:
    """None, or ``value`` as a non-empty 1-D tensor of finite numbers (≥ 0 if ``nonnegative``)."""
    if value is None:
        return None
    try:
        v = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"{owner}: {name} must be a 1-D tensor (one entry per task) or None, got {value!r}."
        ) from e
    if not v.is_floating_point():
        v = v.to(torch.get_default_dtype())
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(
            f"{owner}: {name} must be a non-empty 1-D tensor (one entry per task), got shape "
            f"{tuple(v.shape)}."
        )
    if not bool(torch.isfinite(v).all()) or (nonnegative and bool((v < 0).any())):
        kind = "finite numbers ≥ 0" if nonnegative else "finite numbers"
        raise ValueError(f"{owner}: {name} must hold {kind}, got {v.tolist()}.")
    return v
