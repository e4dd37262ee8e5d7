"""Power mean of the losses with exponent gamma."""

from __future__ import annotations

import torch
from torch import Tensor

from .._common import (
    check_positive_losses,
)
from ..base import Weighting
from ..registry import register_method

__all__ = ["GeneralizedMean"]


@register_method(
    "generalized-mean",
    description="Power mean of the losses with exponent gamma.",
    aliases=("GeneralizedMean",),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class GeneralizedMean(Weighting):
    """Generalized (power) mean M_γ = ((1/k) Σ Lᵢ^γ)^(1/γ): w = (1/k) Lᵢ^(γ−1) M_γ^(1−γ).

    γ = 1 is the mean, γ = 0 the geometric mean, γ → ∞ the max; needs L > 0.
    """

    def __init__(self, gamma: float = 2.0) -> None:
        if gamma != gamma or abs(gamma) == float("inf"):
            raise ValueError(f"gamma must be a finite number, got {gamma!r}.")
        self.gamma = gamma

    def compute(self, *, losses: Tensor) -> Tensor:
        check_positive_losses("GeneralizedMean", losses)
        k = losses.shape[-1]
        g = self.gamma
        logL = torch.log(losses)
        if g == 0:
            return torch.exp(logL.mean(-1, keepdim=True)) / (k * losses)
        # log M = (1/γ) log mean L^γ, computed with logsumexp for range safety
        logM = (
            torch.logsumexp(g * logL, -1, keepdim=True)
            - torch.log(torch.tensor(float(k), dtype=losses.dtype))
        ) / g
        return torch.exp((g - 1.0) * logL + (1.0 - g) * logM) / k
