"""IMTL-L: learned loss scales e^s with -s regularizer.

Liu et al., Towards Impartial Multi-task Learning, ICLR 2021.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..registry import register_method
from ._learned_scale import _LearnedScale

__all__ = ["IMTLL"]


@register_method(
    "imtl-l",
    description="IMTL-L: learned loss scales e^s with -s regularizer.",
    paper="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021",
    aliases=("IMTLL",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class IMTLL(_LearnedScale):
    """IMTL-L (Liu et al., 2021): S = Σ e^(sᵢ)Lᵢ − sᵢ, so w = e^s; s is learned with its own
    optimizer on ∂S/∂sᵢ = e^(sᵢ)Lᵢ − 1 (init s = 0: the plain sum).
    """

    def __init__(
        self, lr: float = 1e-3, optimizer: Literal["sgd", "adam"] = "adam", init: float = 0.0
    ) -> None:
        super().__init__(lr, optimizer, init)

    def _weights_and_grad(self, s: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        w = torch.exp(s)
        return w, w * losses - 1.0
