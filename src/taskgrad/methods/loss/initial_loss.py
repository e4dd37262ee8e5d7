"""Normalize each loss by its value at the first step."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._common import (
    check_positive_losses,
    clone_state,
)
from ..base import Weighting
from ..registry import register_method

__all__ = ["InitialLossNormalization"]


@register_method(
    "initial-loss",
    description="Normalize each loss by its value at the first step.",
    aliases=("InitialLossNormalization",),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class InitialLossNormalization(Weighting):
    """Normalization by the initial loss: w = 1/Lᵢ(0), the losses of the first call.

    State: L(0). Needs L(0) > 0.
    """

    def __init__(self) -> None:
        self._initial: Tensor | None = None

    def compute(self, *, losses: Tensor) -> Tensor:
        if self._initial is None:
            check_positive_losses("InitialLossNormalization (first call)", losses)
            self._initial = losses.detach().clone()
        elif self._initial.shape != losses.shape:
            raise ValueError(
                f"the losses changed shape from {tuple(self._initial.shape)} to "
                f"{tuple(losses.shape)}; call reset()."
            )
        return (1.0 / self._initial).to(losses.dtype)

    def reset(self) -> None:
        self._initial = None

    def state_dict(self) -> dict[str, Any]:
        return {"initial": clone_state(self._initial)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._initial = clone_state(state_dict.get("initial"))
