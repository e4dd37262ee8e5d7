"""MGDA: min-norm point of the convex hull of the task gradients (exact).

Désidéri 2012; Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, NeurIPS 2018.
"""

from __future__ import annotations

from torch import Tensor

from ...solvers import min_norm_simplex
from ..base import Weighting
from ..registry import register_method

__all__ = ["MGDA"]


@register_method(
    "mgda",
    description="MGDA: min-norm point of the convex hull of the task gradients (exact).",
    paper=(
        "Désidéri 2012; Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization, "
        "NeurIPS 2018"
    ),
    aliases=("MGDA",),
    defined="everywhere",
    non_conflicting=True,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class MGDA(Weighting):
    """Multiple-gradient descent (Désidéri 2012; Sener & Koltun 2018), solved exactly.

    w = argmin over the simplex of wᵀGw; d = Jᵀw is the min-norm point of the convex hull of
    the task gradients, with ⟨d, gᵢ⟩ ≥ ‖d‖² for every task.
    """

    def compute(self, *, gram: Tensor) -> Tensor:
        return min_norm_simplex(gram, check_input=False)
