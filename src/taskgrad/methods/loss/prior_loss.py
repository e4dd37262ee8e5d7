"""Normalize each loss by a given prior (reference) loss."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import Weighting
from ..registry import register_method

__all__ = ["PriorLossNormalization"]


@register_method(
    "prior-loss",
    description="Normalize each loss by a given prior (reference) loss.",
    aliases=("PriorLossNormalization",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=False,
    random=False,
    example_kwargs=lambda k: {"prior": [1.0 + i for i in range(k)]},
)
class PriorLossNormalization(Weighting):
    """Normalization by a prior loss: w = 1/Lᵢ^prior for a given positive vector, e.g. the
    loss of a trivial predictor (the class prior, the mean target) for each task.
    """

    def __init__(self, prior: Tensor | list[float]) -> None:
        prior = torch.as_tensor(prior, dtype=torch.float64)
        if prior.dim() != 1 or prior.numel() == 0:
            raise ValueError(
                "prior must be a non-empty vector (one loss per task), got shape "
                f"{tuple(prior.shape)}."
            )
        if bool((prior <= 0).any()) or not bool(torch.isfinite(prior).all()):
            raise ValueError("prior must hold finite losses > 0 (the weights are their inverses).")
        self.prior = prior

    def compute(self, *, losses: Tensor) -> Tensor:
        if losses.shape[-1] != self.prior.shape[0]:
            raise ValueError(
                f"prior has {self.prior.shape[0]} tasks but the losses have {losses.shape[-1]}."
            )
        w = (1.0 / self.prior).to(dtype=losses.dtype, device=losses.device)
        return w.expand(losses.shape).clone()
