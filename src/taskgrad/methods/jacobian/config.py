"""ConFIG (Liu et al., ICLR 2025): the conflict-free direction with equal cosines to every
gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..gram._zoo_checks import check_vector, task_vector
from ..registry import register_method
from ._base import JacobianAggregator

__all__ = ["ConFIG"]


@register_method(
    "config",
    description=(
        "ConFIG: the direction with equal cosines to every unit gradient (pseudo-inverse of J)."
    ),
    paper=(
        "Liu et al., ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks, "
        "ICLR 2025"
    ),
    aliases=("ConFIG",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=False,
    random=False,
)
class ConFIG(JacobianAggregator):
    """ConFIG (Liu, Chu & Thuerey, ICLR 2025, Eq. 2), as TorchJD's ConFIG.

    "ConFIG: towards conflict-free training of physics informed neural networks":

        u = normalize(U⁺ p),  d = (Σᵢ ⟨gᵢ, u⟩) u,

    with U the unit gradients gᵢ/‖gᵢ‖ as rows (zero rows stay zero) and p = ``pref_vector``
    (default all ones): for linearly independent gradients, ⟨gᵢ/‖gᵢ‖, u⟩ ∝ pᵢ. Needs the
    Jacobian (a pseudo-inverse of the k × P matrix U: O(k²P) time, one extra k × P buffer).
    """

    def __init__(self, pref_vector: Tensor | None = None) -> None:
        self.pref_vector = check_vector("pref_vector", pref_vector)

    def direction(self, jacobian: Tensor, losses: Tensor | None) -> Tensor:
        J = jacobian
        k = J.shape[0]
        p = task_vector("pref_vector", self.pref_vector, k, 1.0, J)
        norms = J.norm(dim=1, keepdim=True)
        U = torch.where(
            norms > 0,
            J / torch.where(norms > 0, norms, torch.ones_like(norms)),
            torch.zeros_like(J),
        )
        best = torch.linalg.pinv(U) @ p
        n = best.norm()
        u = best / n if n > 0 else best
        return (J @ u).sum() * u
