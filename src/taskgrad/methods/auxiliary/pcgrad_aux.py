"""PCGrad on auxiliaries only: project a conflicting auxiliary off the primary."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import check_real
from ..base import Weighting
from ..registry import register_method

__all__ = ["PCGradAux"]


@register_method(
    "pcgrad-aux",
    description="PCGrad on auxiliaries only: project a conflicting auxiliary off the primary.",
    aliases=("PCGradAux",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class PCGradAux(Weighting):
    """PCGrad on the auxiliaries only: an auxiliary gradient that conflicts with the primary
    (⟨gᵢ, g₀⟩ < 0) is projected off it, gᵢ − ⟨gᵢ, g₀⟩/‖g₀‖² g₀; the primary is kept as is.

    d = g₀ + Σᵢ gᵢ', so wᵢ = 1 for auxiliaries and w₀ = 1 − Σ_{conflicting i} G₀ᵢ/G₀₀.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = check_real("PCGradAux", "eps", eps, low=0.0)

    def compute(self, *, gram: Tensor) -> Tensor:
        g00 = gram[..., 0, 0]
        scale = (
            torch.diagonal(gram, dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(gram.dtype).tiny)
        )
        alive = g00 > self.eps * scale
        conflict = (gram[..., 0, 1:]).clamp_max(0.0).sum(-1)
        w0 = 1.0 - torch.where(
            alive, conflict / torch.where(alive, g00, torch.ones_like(g00)), torch.zeros_like(g00)
        )
        w = torch.ones_like(gram[..., 0])
        w[..., 0] = w0
        return w
