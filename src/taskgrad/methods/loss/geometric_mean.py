"""Geometric mean of the losses: w_i = GM/(k L_i).

Chennupati et al., MultiNet++, CVPR Workshops 2019 (GLS).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._common import (
    check_positive_losses,
)
from ..base import Weighting
from ..registry import register_method

__all__ = ["GeometricMean"]


@register_method(
    "geometric-mean",
    description="Geometric mean of the losses: w_i = GM/(k L_i).",
    paper="Chennupati et al., MultiNet++, CVPR Workshops 2019 (GLS)",
    aliases=("GeometricMean", "GLS"),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class GeometricMean(Weighting):
    """Geometric mean (Πᵢ Lᵢ)^(1/k) (GLS, Chennupati et al. 2019): w = GM/(k Lᵢ); needs L > 0."""

    def compute(self, *, losses: Tensor) -> Tensor:
        check_positive_losses("GeometricMean", losses)
        k = losses.shape[-1]
        gm = torch.exp(torch.log(losses).mean(-1, keepdim=True))
        return gm / (k * losses)
