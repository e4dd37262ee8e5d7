"""Gradient-norm normalization: w_i = 1/||g_i|| (Gram diagonal)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .._common import (
    diag_norms,
)
from .._validate import check_choice, check_real
from ..base import Weighting
from ..registry import register_method

__all__ = ["GradientNormalization"]


@register_method(
    "gradient-normalization",
    description="Gradient-norm normalization: w_i = 1/||g_i|| (Gram diagonal).",
    aliases=("GradientNormalization",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=False,
    random=False,
)
class GradientNormalization(Weighting):
    """Gradient-norm normalization: w = s/‖gᵢ‖, so d = s Σ gᵢ/‖gᵢ‖ (uses only diag G).

    ``scale="unit"``: s = 1 (a sum of unit vectors); ``scale="mean"``: s = mean_j ‖gⱼ‖, every
    task contributing with the mean gradient norm. Zero gradients get weight 0.
    """

    def __init__(self, scale: Literal["unit", "mean"] = "unit", eps: float = 1e-12) -> None:
        self.scale = check_choice("GradientNormalization", "scale", scale, ("unit", "mean"))
        self.eps = check_real("GradientNormalization", "eps", eps, low=0.0)

    def compute(self, *, gram: Tensor) -> Tensor:
        n = diag_norms(gram)
        dead = n <= self.eps * n.amax(-1, keepdim=True).clamp_min(torch.finfo(n.dtype).tiny)
        inv = torch.where(dead, torch.zeros_like(n), 1.0 / torch.where(dead, torch.ones_like(n), n))
        if self.scale == "mean":
            inv = inv * n.mean(-1, keepdim=True)
        return inv
