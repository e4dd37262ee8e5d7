"""DualProj: see :class:`DualProj`."""

from __future__ import annotations

from torch import Tensor

from .. import _impl
from .._common import (
    work_dtype,
)
from .._dual_cone import dual_cone_weights
from .._impl import Impl
from ..base import Weighting
from ..registry import register_method

__all__ = ["DualProj"]


@register_method(
    "dualproj",
    description="DualProj: the mean gradient projected onto the dual cone of the gradients.",
    paper="Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 (GEM's projection)",
    aliases=("DualProj",),
    defined="everywhere",
    non_conflicting=True,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class DualProj(Weighting):
    """DualProj: project the preference combination Jᵀp (default the mean gradient) onto the dual
    cone of the task gradients (GEM's Equation 11; Quinton & Rey, 2024).

    w = argmin vᵀGv s.t. v ≥ p, solved as the NNLS of λ = v − p ≥ 0 minimizing
    ½λᵀGλ + (Gp)ᵀλ (``impl`` as in :class:`UPGrad`). The result never conflicts with a task
    gradient: Gw ≥ 0.
    """

    def __init__(self, pref_vector: Tensor | None = None, impl: Impl = "auto") -> None:
        self.pref_vector = pref_vector
        self.impl = _impl.check_impl(impl)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        p = _impl.check_pref(self.pref_vector, gram.shape[-1], gram.new_empty(0, dtype=work_dtype(gram)))
        return dual_cone_weights(gram, p.unsqueeze(0), self.impl)[..., 0, :]
