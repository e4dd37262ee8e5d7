"""Plain sum of the losses: w = 1."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import Weighting
from ..registry import register_method

__all__ = ["Sum"]


@register_method(
    "sum",
    description="Plain sum of the losses: w = 1.",
    aliases=("Sum",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class Sum(Weighting):
    """The plain sum Σ Lᵢ: w = 1 for every task."""

    def compute(self, *, losses: Tensor) -> Tensor:
        return torch.ones_like(losses)
