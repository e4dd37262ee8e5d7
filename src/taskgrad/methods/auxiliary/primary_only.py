"""Primary task only: w = (1, 0, ..., 0)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import Weighting
from ..registry import register_method

__all__ = ["PrimaryOnly"]


@register_method(
    "primary-only",
    description="Primary task only: w = (1, 0, ..., 0).",
    aliases=("PrimaryOnly",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=True,
    stateful=False,
    random=False,
)
class PrimaryOnly(Weighting):
    """Primary only: w = (1, 0, …, 0) (the auxiliaries are ignored)."""

    def compute(self, *, losses: Tensor) -> Tensor:
        w = torch.zeros_like(losses)
        w[..., 0] = 1.0
        return w
