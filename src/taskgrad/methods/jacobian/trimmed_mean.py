"""Coordinate-wise trimmed mean (Yin et al., ICML 2018), a Byzantine-robust aggregator."""

from __future__ import annotations

import torch
from torch import Tensor

from ..gram._zoo_checks import check_int
from ..registry import register_method
from ._base import JacobianAggregator

__all__ = ["TrimmedMean"]


@register_method(
    "trimmed-mean",
    description=(
        "Trimmed mean: per coordinate, the mean without the trim_number largest and smallest "
        "values."
    ),
    paper=(
        "Yin et al., Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates, "
        "ICML 2018"
    ),
    aliases=("TrimmedMean", "TM"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
    example_kwargs=lambda k: {"trim_number": (k - 1) // 2},
)
class TrimmedMean(JacobianAggregator):
    """Coordinate-wise trimmed mean (Yin, Chen, Ramchandran & Bartlett, "Byzantine-robust
    distributed learning", ICML 2018; TorchJD's TrimmedMean): in each coordinate drop the
    ``trim_number`` largest and smallest of the k task values and average the k − 2·trim_number
    left. Needs k ≥ 2·trim_number + 1 and the Jacobian (a sort of the k × P matrix).
    """

    def __init__(self, trim_number: int) -> None:
        self.trim_number = check_int("trim_number", trim_number, low=0)

    def direction(self, jacobian: Tensor, losses: Tensor | None) -> Tensor:
        k = jacobian.shape[0]
        t = self.trim_number
        if k < 2 * t + 1:
            raise ValueError(
                f"TrimmedMean with trim_number={t} needs at least 2·trim_number + 1 = {2 * t + 1} "
                "tasks, "
                f"got {k}; lower trim_number."
            )
        ordered, _ = torch.sort(jacobian, dim=0)
        return ordered[t : k - t].mean(dim=0)
