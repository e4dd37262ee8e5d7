"""Sum of log losses: w_i = 1/L_i."""

from __future__ import annotations

from torch import Tensor

from .._common import (
    check_positive_losses,
)
from ..base import Weighting
from ..registry import register_method

__all__ = ["LogSum"]


@register_method(
    "log-sum",
    description="Sum of log losses: w_i = 1/L_i.",
    aliases=("LogSum",),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class LogSum(Weighting):
    """Σ log Lᵢ: w = 1/Lᵢ (each loss relative to its current value; needs L > 0)."""

    def compute(self, *, losses: Tensor) -> Tensor:
        check_positive_losses("LogSum", losses)
        return 1.0 / losses
