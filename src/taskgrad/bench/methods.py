"""The methods of the harness: registry methods built from a config's arguments, and the
single-task baseline.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import methods as _methods
from ..methods.base import Weighting

__all__ = ["OneTask", "make_method", "method_arguments"]


class OneTask(Weighting):
    """Single-task baseline: w = e_i (only task i is trained).

    ``present`` (a (k,) bool tensor, set by the harness around a step with absent tasks, whose
    method sees the present tasks only): task i is then at position Σ_{j<i} present[j] of the
    losses it is given.
    """

    needs = frozenset({"losses"})

    def __init__(self, index: int) -> None:
        if index < 0:
            raise ValueError(f"task index must be ≥ 0, got {index}.")
        self.index = index
        self.present: Tensor | None = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        pos = self.index
        if self.present is not None:
            if not bool(self.present[self.index]):
                raise ValueError(
                    f"single-task index {self.index} is absent from the batch: there is nothing "
                    "to train (skip the step)."
                )
            pos = int(self.present[: self.index].sum())
        if pos >= losses.shape[-1]:
            raise ValueError(
                f"single-task index {self.index} but there are {losses.shape[-1]} tasks."
            )
        w = torch.zeros_like(losses)
        w[..., pos] = 1.0
        return w


def _is_numbers(v: Any) -> bool:
    """A non-empty list of numbers, or of such lists (a vector or matrix written in a config)."""
    if not isinstance(v, list) or not v:
        return False
    return all(
        (isinstance(x, (int, float)) and not isinstance(x, bool)) or _is_numbers(x) for x in v
    )


def method_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A config's method arguments as the methods take them: a list of numbers (TOML and YAML have
    no tensors, e.g. FAMO's ``min_losses = [-3.0, -25.0]``) becomes a float64 tensor.
    """
    return {
        k: torch.tensor(v, dtype=torch.float64) if _is_numbers(v) else v for k, v in kwargs.items()
    }


def make_method(name: str, kwargs: dict[str, Any] | None = None) -> Weighting:
    """``single-task:<i>`` (:class:`OneTask`), or the registry method ``name`` with the config's
    arguments ``kwargs`` (lists of numbers as tensors, see :func:`method_arguments`).
    """
    if name.startswith("single-task:"):
        return OneTask(int(name.split(":", 1)[1]))
    return _methods.get(name, **method_arguments(dict(kwargs or {})))
