"""Constant weights: a fixed linear combination of the task gradients."""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import Weighting
from ..registry import register_method
from ._zoo_checks import check_length, check_vector

__all__ = ["Constant"]


@register_method(
    "constant",
    description="Constant: fixed task weights given by the user.",
    paper="TorchJD's Constant aggregator",
    aliases=("Constant",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=False,
    random=False,
    example_kwargs=lambda k: {"weights": torch.linspace(0.5, 1.5, k, dtype=torch.float64)},
)
class Constant(Weighting):
    """Fixed weights w = ``weights`` at every step: d = Σ wᵢ gᵢ (TorchJD's Constant).

    Needs only the losses (for the number of tasks), so no Gram matrix is computed.
    """

    needs = frozenset({"losses"})

    def __init__(self, weights: Tensor) -> None:
        if weights is None:
            raise ValueError("Constant needs weights: a 1-D tensor with one weight per task.")
        self.weights = check_vector("weights", weights)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """The direction d = Σ wᵢ gᵢ for the Jacobian J (k, P) (no losses needed)."""
        if losses is not None:
            return super().aggregate(jacobian, losses)
        from ..jacobian._base import check_jacobian

        check_length("weights", self.weights, check_jacobian(jacobian))
        return self.weights.to(dtype=jacobian.dtype, device=jacobian.device) @ jacobian

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        like = losses if losses is not None else gram[..., 0]  # type: ignore[index]
        check_length("weights", self.weights, like.shape[-1])
        return self.weights.to(dtype=like.dtype, device=like.device).expand(like.shape).clone()
