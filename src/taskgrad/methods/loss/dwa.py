"""Dynamic Weight Average: softmax of loss descent rates.

Liu et al., End-to-End Multi-Task Learning with Attention, CVPR 2019.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import (
    clone_state,
)
from .._validate import check_int, check_real
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

    ``iteration_window=W`` is the sliding-window variant of the Nash-MTL and FAMO repositories:
    the last 2W loss vectors sit in a FIFO buffer that starts filled with ones; each call first
    pushes its losses, and from the (W+2)-th call on the weights become
    K softmax((mean of the newest W) / (mean of the oldest W) / T) (uniform 1 before; the
    reference then averages the weighted losses, i.e. a further 1/K). Epochs are not used then.
    """

    # state, set by reset()
    _sum: Tensor | None
    _n: int
    _history: list[Tensor]
    _window: Tensor | None
    _weights: Tensor | None
    _calls: int

    def __init__(
        self,
        temperature: float = 2.0,
        steps_per_epoch: int | None = 1,
        iteration_window: int | None = None,
    ) -> None:
        if iteration_window is not None and (
            isinstance(iteration_window, bool)
            or not isinstance(iteration_window, int)
            or iteration_window < 1
        ):
            raise ValueError(
                f"iteration_window must be a positive int or None, got {iteration_window!r}."
            )
        self.iteration_window = iteration_window
        temperature = check_real("DWA", "temperature", temperature, low=0.0, low_open=True)
        if steps_per_epoch is not None:
            check_int("DWA", "steps_per_epoch (or None)", steps_per_epoch, low=1)
        self.temperature = temperature
        self.steps_per_epoch = steps_per_epoch
        self.reset()

    def compute(self, *, losses: Tensor) -> Tensor:
        k = losses.shape[-1]
        if self.iteration_window is not None:
            return self._windowed(losses)
        if len(self._history) < 2:
            w = torch.ones_like(losses)
        else:
            older, newer = self._history
            if older.shape != losses.shape:
                raise ValueError(
                    f"the losses changed shape from {tuple(older.shape)} to {tuple(losses.shape)}; "
                    "call reset()."
                )
            w = k * torch.softmax((newer / older).to(losses.dtype) / self.temperature, dim=-1)
        Ld = losses.detach()
        self._sum = Ld.clone() if self._sum is None else self._sum + Ld
        self._n += 1
        if self.steps_per_epoch is not None and self._n >= self.steps_per_epoch:
            self.end_epoch()
        return w

    def _windowed(self, losses: Tensor) -> Tensor:
        W, k = self.iteration_window, losses.shape[-1]
        assert W is not None
        Ld = losses.detach()
        if self._window is None:
            self._window = torch.ones((2 * W, *Ld.shape), dtype=Ld.dtype, device=Ld.device)
            self._weights = torch.ones_like(Ld)
        elif self._window.shape[1:] != Ld.shape:
            raise ValueError(
                f"the losses changed shape from {tuple(self._window.shape[1:])} to "
                f"{tuple(Ld.shape)}; call reset()."
            )
        self._window = torch.cat([self._window[1:], Ld.to(self._window).unsqueeze(0)])
        if self._calls > W:
            ratio = self._window[W:].mean(0) / self._window[:W].mean(0)
            self._weights = k * torch.softmax(ratio / self.temperature, dim=-1)
        self._calls += 1
        assert self._weights is not None
        return self._weights.to(losses.dtype).clone()

    def end_epoch(self) -> None:
        """Close the current epoch: its mean loss enters the history (keeps the last two)."""
        if self._sum is None:
            return
        self._history = [*self._history, self._sum / self._n][-2:]
        self._sum = None
        self._n = 0

    def reset(self) -> None:
        self._sum = None
        self._n = 0
        self._history = []
        self._window = None
        self._weights = None
        self._calls = 0

    def state_dict(self) -> dict[str, Any]:
        if self.iteration_window is not None:
            return {
                "window": clone_state(self._window),
                "weights": clone_state(self._weights),
                "calls": self._calls,
            }
        return {"sum": clone_state(self._sum), "n": self._n, "history": clone_state(self._history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.iteration_window is not None:
            self._window = clone_state(state_dict["window"])
            self._weights = clone_state(state_dict["weights"])
            self._calls = int(state_dict["calls"])
            return
        self._sum = clone_state(state_dict["sum"])
        self._n = int(state_dict["n"])
        self._history = clone_state(list(state_dict["history"]))
