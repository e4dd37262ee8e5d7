"""DualProj: the mean gradient projected onto the dual cone of the gradients.

Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 (GEM's projection).
"""

from __future__ import annotations

from torch import Tensor

from .._dual_cone import DualConeWeighting, dual_cone_weights
from ..registry import register_method

__all__ = ["DualProj"]


@register_method(
    "dualproj",
    description="DualProj: the mean gradient projected onto the dual cone of the gradients.",
    paper=(
        "Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 (GEM's projection)"
    ),
    aliases=("DualProj",),
    defined="everywhere",
    non_conflicting=True,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class DualProj(DualConeWeighting):
    """DualProj: project the preference combination Jᵀp (default the mean gradient) onto the dual
    cone of the task gradients (GEM's Equation 11; Quinton & Rey, 2024).

    w = argmin vᵀGv s.t. v ≥ p, solved as the NNLS of λ = v − p ≥ 0 minimizing
    ½λᵀGλ + (Gp)ᵀλ (``impl`` as in :class:`UPGrad`). The result never conflicts with a task
    gradient: Gw ≥ 0.

    ``norm_eps``/``reg_eps`` (default 0: the exact projection) solve the problem on
    G/tr(G) + reg_eps·I instead, as TorchJD's QuadprogProjector does (its defaults are 1e-4 and
    1e-4): pass them to reproduce TorchJD's numbers exactly.
    """

    def compute(self, *, gram: Tensor) -> Tensor:
        p, gram = self._pref_and_gram(gram)
        return dual_cone_weights(gram, p.unsqueeze(0), self.impl)[..., 0, :]
