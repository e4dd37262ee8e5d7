"""The base of Uncertainty Weighting, IMTL-L and hybrid IMTL: learned per-task loss scales."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .._common import (
    LearnedTaskParameter,
)
from .._validate import check_choice, check_real
from ..base import Weighting

__all__ = ["_LearnedScale", "_LearnedScaleState"]


class _LearnedScaleState(Weighting):
    """Learned per-task loss scales s (Uncertainty Weighting, IMTL-L, hybrid IMTL): the validated
    ``lr``/``optimizer``/``init``, s with its own optimizer, and its state; subclasses compute.
    """

    def __init__(self, lr: float, optimizer: Literal["sgd", "adam"], init: float) -> None:
        name = type(self).__name__
        self.lr = check_real(name, "lr", lr, low=0.0)
        self.optimizer = check_choice(name, "optimizer", optimizer, ("sgd", "adam"))
        check_real(name, "init", init)
        self._s = LearnedTaskParameter(init, lr, optimizer)

    @property
    def log_scale(self) -> Tensor | None:
        """The learned per-task parameter s (None before the first call)."""
        return None if self._s.value is None else self._s.value.detach()

    def reset(self) -> None:
        self._s.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"s": self._s.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._s.load_state_dict(state_dict["s"])


class _LearnedScale(_LearnedScaleState):
    """Base of Uncertainty Weighting and IMTL-L: S(L, s) = Σ a(sᵢ)Lᵢ + b(sᵢ); the weights are
    a(s) and s takes one optimizer step on ∂S/∂s = a'(s)L + b'(s) per call.
    """

    def _weights_and_grad(self, s: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def compute(self, *, losses: Tensor) -> Tensor:
        s = self._s.get(losses)
        with torch.no_grad():
            w, grad = self._weights_and_grad(s.detach(), losses.to(s.dtype))
        self._s.step(grad)
        return w.to(losses.dtype)
