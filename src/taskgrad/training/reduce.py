"""Reducers: how the numbers one step decides from are combined across processes.

A step computes, per process, a flag (can it step?), the k losses and the source's payload;
the reducer turns them into the numbers every participant decides from. :class:`LocalReducer`
is the identity (one process); :class:`taskgrad.distributed.AllReduce` sums them over a process
group. The step object is the same in both cases: the reducer is injected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

__all__ = ["LocalReducer", "Reducer", "StepNumbers"]

ADVICE = "Lower the learning rate, check the inputs, or use nonfinite='skip'."


@dataclass
class StepNumbers:
    """The numbers one step decides from, before and after :meth:`Reducer.combine`.

    bad: why this process cannot step (None: its losses and payload are finite); after the
    combine, why the step is skipped everywhere. losses: (k,) the losses the method sees.
    payload: what the Gram is made from (None: no Gram this step). n_bad: after the combine,
    how many processes could not step. numel: numbers the combine exchanged.
    """

    bad: str | None
    losses: Tensor
    payload: Tensor | None
    n_bad: int = 0
    numel: int = 0


class Reducer:
    """Combine per-process numbers; the base class is one process (the identity)."""

    #: the payload must add over processes (a Jacobian rather than its Gram)
    additive: bool = False
    #: compute the payload even on a process that cannot step (collectives must match)
    lockstep: bool = False

    @property
    def world_size(self) -> int:
        """Number of processes that take each step together."""
        return 1

    def combine(self, numbers: StepNumbers, what: str = "step") -> StepNumbers:
        """The numbers every participant decides from (one process: these, n_bad ∈ {0, 1})."""
        return replace(numbers, n_bad=int(numbers.bad is not None))

    def attach(self, source: Any) -> None:
        """Called with the step's gradient source once it is known."""

    def layout(self) -> list[Tensor] | None:
        """The parameters every process lays its accumulated gradients out over (None: any)."""
        return None

    def average(self, t: Tensor, what: str = "gradient") -> Tensor:
        """Mean of ``t`` over the processes (the identity in one process)."""
        return t

    def total(self, t: Tensor, what: str = "sum") -> Tensor:
        """Σ of ``t`` over the processes (the identity in one process)."""
        return t

    def before_step(self) -> None:
        """Called at the start of every step (a consistency check across processes)."""

    def check_weights(self, v: Tensor) -> None:
        """Called with the weights about to be applied (a consistency check across processes)."""

    def skip_texts(self, why: str, n_bad: int) -> tuple[str, str]:
        """(error message for nonfinite='raise', ``reason`` of the skipped step)."""
        return (
            f"{why} is not finite (NaN or Inf); the step cannot be taken. {ADVICE}",
            f"non-finite {why}",
        )


class LocalReducer(Reducer):
    """One process: the step's numbers are the ones it decides from."""


def as_float(t: Tensor) -> Tensor:
    """``t`` in float32 (float64 kept)."""
    return t if t.dtype == torch.float64 else t.float()
