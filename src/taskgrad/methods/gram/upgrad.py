"""UPGrad: sum of each gradient projected onto the dual cone of all gradients.

Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._dual_cone import DualConeWeighting, dual_cone_weights
from ..registry import register_method

__all__ = ["UPGrad"]


@register_method(
    "upgrad",
    description="UPGrad: sum of each gradient projected onto the dual cone of all gradients.",
    paper="Quinton & Rey, Jacobian Descent for Multi-Objective Optimization, 2024",
    aliases=("UPGrad",),
    defined="everywhere",
    non_conflicting=True,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class UPGrad(DualConeWeighting):
    """UPGrad (Quinton & Rey, 2024): project each pᵢgᵢ onto the dual cone of the gradients and sum.

    Projection of Jᵀu onto {x : Jx ≥ 0} is Jᵀv with v = argmin vᵀGv s.t. v ≥ u; with
    u = pᵢeᵢ (p: ``pref_vector``, default 1/k); w = Σᵢ vⁱ. The k projections are one call of
    :func:`~taskgrad.methods._dual_cone.dual_cone_weights` (``impl``: see
    :mod:`taskgrad.methods._impl`). The result never conflicts with a task
    gradient: Gw ≥ 0.

    ``norm_eps``/``reg_eps`` (default 0: the exact projection) solve the problem on
    G/tr(G) + reg_eps·I instead, as TorchJD's QuadprogProjector does (its defaults are 1e-4 and
    1e-4): pass them to reproduce TorchJD's numbers exactly.
    """

    def compute(self, *, gram: Tensor) -> Tensor:
        p, gram = self._pref_and_gram(gram)
        return dual_cone_weights(gram, torch.diag(p), self.impl).sum(-2)
