"""Equal weights 1/k: the gradient of the mean loss."""

from __future__ import annotations

from torch import Tensor

from ..base import Weighting, _uniform
from ..registry import register_method

__all__ = ["Mean"]


@register_method(
    "mean",
    description="Equal weights 1/k: the gradient of the mean loss.",
    aliases=("Mean", "EW"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class Mean(Weighting):
    """Equal weights wᵢ = 1/k: the gradient of the mean loss (1/k) Σ Lᵢ (needs no Gram)."""

    def compute(self, *, losses: Tensor) -> Tensor:
        return _uniform(losses[..., 0], losses.shape[-1])
