"""DualProj: the mean gradient projected onto the dual cone of the gradients.

Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024 (GEM's projection).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _impl
from .._common import (
    work_dtype,
)
from .._dual_cone import dual_cone_weights, torchjd_gram
from .._impl import Impl
from .._validate import check_vector
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

    ``norm_eps``/``reg_eps`` (default 0: the exact projection) solve the problem on
    G/tr(G) + reg_eps·I instead, as TorchJD's QuadprogProjector does (its defaults are 1e-4 and
    1e-4): pass them to reproduce TorchJD's numbers exactly.
    """

    def __init__(
        self, pref_vector: Tensor | None = None, impl: Impl = "auto", norm_eps: float = 0.0, reg_eps: float = 0.0
    ) -> None:
        self.pref_vector = check_vector("DualProj", "pref_vector", pref_vector)
        self.impl = _impl.check_impl(impl)
        torchjd_gram(torch.zeros(1, 1), norm_eps, reg_eps)  # validates both
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps

    def compute(self, *, gram: Tensor) -> Tensor:
        p = _impl.check_pref(self.pref_vector, gram.shape[-1], gram.new_empty(0, dtype=work_dtype(gram)))
        gram = torchjd_gram(gram, self.norm_eps, self.reg_eps)
        return dual_cone_weights(gram, p.unsqueeze(0), self.impl)[..., 0, :]
