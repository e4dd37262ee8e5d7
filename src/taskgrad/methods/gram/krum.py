"""Krum and Multi-Krum (Blanchard et al., 2017): select the gradients closest to their
neighbours.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..base import Weighting
from ..errors import UndefinedMethodError
from ..registry import register_method
from ._zoo_checks import check_int

__all__ = ["Krum"]


@register_method(
    "krum",
    description=(
        "Krum / Multi-Krum: the gradients closest to their nearest neighbours (Byzantine-robust)."
    ),
    paper=(
        "Blanchard et al., Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent, "
        "NeurIPS 2017"
    ),
    aliases=("Krum", "Multi-Krum"),
    defined="enough-tasks",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=False,
    random=False,
    example_kwargs=lambda k: {"n_byzantine": 0},
)
class Krum(Weighting):
    """Krum / Multi-Krum (Blanchard et al., NeurIPS 2017), a Byzantine-robust aggregator.

    Each gradient scores the sum of its distances to its k − n_byzantine − 2 nearest other
    gradients, ‖gᵢ − gⱼ‖² = Gᵢᵢ + Gⱼⱼ − 2Gᵢⱼ read from the Gram matrix; the ``n_selected`` lowest
    scores get weight 1/n_selected, the others 0 (TorchJD's Krum, same parameter names).
    Ties (structural for k = 3: the two closest gradients share the best score) are broken by
    ``torch.topk`` as in TorchJD, so permuting the tasks can change the choice. Needs
    k ≥ max(n_byzantine + 3, n_selected) (``min_tasks``), else UndefinedMethodError.
    """

    def __init__(self, n_byzantine: int, n_selected: int = 1) -> None:
        self.n_byzantine = check_int("n_byzantine", n_byzantine, low=0)
        self.n_selected = check_int("n_selected", n_selected, low=1)

    @property
    def min_tasks(self) -> int:
        """The fewest tasks Krum is defined for: max(n_byzantine + 3, n_selected)."""
        return max(self.n_byzantine + 3, self.n_selected)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        k = gram.shape[-1]
        if k < self.n_byzantine + 3:
            raise UndefinedMethodError(
                f"Krum with n_byzantine={self.n_byzantine} needs at least n_byzantine + 3 = "
                f"{self.n_byzantine + 3} tasks, got {k}; lower n_byzantine."
            )
        if k < self.n_selected:
            raise UndefinedMethodError(
                f"Krum with n_selected={self.n_selected} needs at least that many tasks, got {k}."
            )
        sq = torch.diagonal(gram, dim1=-2, dim2=-1)
        dist = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * gram).clamp_min(0.0).sqrt()
        nearest, _ = torch.topk(dist, k=k - self.n_byzantine - 1, dim=-1, largest=False)
        scores = nearest[..., 1:].sum(-1)  # the smallest distance is the gradient to itself
        _, chosen = torch.topk(scores, k=self.n_selected, dim=-1, largest=False)
        w = torch.zeros_like(scores)
        w.scatter_(-1, chosen, 1.0 / self.n_selected)
        return w
