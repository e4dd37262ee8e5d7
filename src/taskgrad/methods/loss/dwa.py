"""DWA: see :class:`DWA`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import (
    clone_state,
)
from ..base import Weighting
from ..registry import register_method

__all__ = ["DWA"]


@register_method(
    "dwa",
    description="Dynamic Weight Average: softmax of loss descent rates.",
    paper="Liu et al., End-to-End Multi-Task Learning with Attention, CVPR 2019",
    aliases=("DWA",),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class DWA(Weighting):
    """Dynamic Weight Average (Liu et al., 2019): w = K softmax(r/T), rᵢ = L̄ᵢ(e−1)/L̄ᵢ(e−2).

    L̄(e) is the mean loss over epoch e. Each call uses the two last completed epochs (uniform
    weights 1 until two exist), then adds its losses to the current epoch. An epoch closes
    every ``steps_per_epoch`` calls (default 1: per-step DWA), or, with
    ``steps_per_epoch=None``, when :meth:`end_epoch` is called. State: the sums and history.
    """

    needs = frozenset({"losses"})

    def __init__(self, temperature: float = 2.0, steps_per_epoch: int | None = 1) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive int or None, got {steps_per_epoch!r}.")
        self.temperature = temperature
        self.steps_per_epoch = steps_per_epoch
        self.reset()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        k = losses.shape[-1]
        if len(self._history) < 2:
            w = torch.ones_like(losses)
        else:
            older, newer = self._history
            if older.shape != losses.shape:
                raise ValueError(f"the losses changed shape from {tuple(older.shape)} to {tuple(losses.shape)}; call reset().")
            w = k * torch.softmax((newer / older).to(losses.dtype) / self.temperature, dim=-1)
        Ld = losses.detach()
        self._sum = Ld.clone() if self._sum is None else self._sum + Ld
        self._n += 1
        if self.steps_per_epoch is not None and self._n >= self.steps_per_epoch:
            self.end_epoch()
        return w

    def end_epoch(self) -> None:
        """Close the current epoch: its mean loss enters the history (keeps the last two)."""
        if self._sum is None:
            return
        self._history = [*self._history, self._sum / self._n][-2:]
        self._sum = None
        self._n = 0

    def reset(self) -> None:
        self._sum: Tensor | None = None
        self._n = 0
        self._history: list[Tensor] = []

    def state_dict(self) -> dict[str, Any]:
        return {"sum": clone_state(self._sum), "n": self._n, "history": clone_state(self._history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sum = clone_state(state_dict["sum"])
        self._n = int(state_dict["n"])
        self._history = clone_state(list(state_dict["history"]))
