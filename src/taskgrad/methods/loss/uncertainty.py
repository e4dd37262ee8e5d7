"""Uncertainty Weighting (Kendall 2018), learned log-variances.

Kendall et al., Multi-Task Learning Using Uncertainty to Weigh Losses, CVPR 2018.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..registry import register_method
from ._learned_scale import _LearnedScale

__all__ = ["UncertaintyWeighting"]


@register_method(
    "uncertainty",
    description="Uncertainty Weighting (Kendall 2018), learned log-variances.",
    paper="Kendall et al., Multi-Task Learning Using Uncertainty to Weigh Losses, CVPR 2018",
    aliases=("UncertaintyWeighting", "UW"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class UncertaintyWeighting(_LearnedScale):
    """Uncertainty Weighting (Kendall et al., 2018): S = Σ ½e^(−sᵢ)Lᵢ + ½sᵢ, s = log σ².

    w = ½e^(−s); s is learned: each call takes one step of its own optimizer on
    ∂S/∂sᵢ = ½ − ½e^(−sᵢ)Lᵢ (init s = 0, uniform weights ½).
    """

    def __init__(
        self, lr: float = 1e-3, optimizer: Literal["sgd", "adam"] = "adam", init: float = 0.0
    ) -> None:
        super().__init__(lr, optimizer, init)

    def _weights_and_grad(self, s: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        w = 0.5 * torch.exp(-s)
        return w, 0.5 - w * losses
