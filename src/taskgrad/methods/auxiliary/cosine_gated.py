"""Auxiliaries kept when cos(g0, g_i) > 0 (Du et al. 2018, unweighted).

Du et al., Adapting Auxiliary Losses Using Gradient Similarity, 2018.
"""

from __future__ import annotations

from torch import Tensor

from .._validate import check_bool, check_real
from ..base import Weighting
from ..registry import register, register_method
from ._cosines import _cosines

__all__ = ["CosineGatedAux"]


@register_method(
    "cosine-gated",
    description="Auxiliaries kept when cos(g0, g_i) > 0 (Du et al. 2018, unweighted).",
    paper="Du et al., Adapting Auxiliary Losses Using Gradient Similarity, 2018",
    aliases=("CosineGatedAux",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class CosineGatedAux(Weighting):
    """Auxiliary gradients gated by cosine similarity with the primary (Du et al., 2018).

    Unweighted: wᵢ = 1 if cos(g₀, gᵢ) > 0 else 0. Weighted: wᵢ = max(0, cos(g₀, gᵢ)).
    The primary has weight 1. A zero gradient counts as cos = 0 (gated off).
    """

    def __init__(self, weighted: bool = False, eps: float = 1e-12) -> None:
        self.weighted = check_bool("CosineGatedAux", "weighted", weighted)
        self.eps = check_real("CosineGatedAux", "eps", eps, low=0.0)

    def compute(self, *, gram: Tensor) -> Tensor:
        cos, _ = _cosines(gram, self.eps)
        w = cos.clamp_min(0.0) if self.weighted else (cos > 0).to(gram.dtype)
        w = w.clone()
        w[..., 0] = 1.0
        return w


def cosine_weighted(eps: float = 1e-12) -> CosineGatedAux:
    """Auxiliaries weighted by max(0, cos(g₀, gᵢ)): ``CosineGatedAux(weighted=True)``."""
    return CosineGatedAux(weighted=True, eps=eps)


register(
    "cosine-weighted",
    cosine_weighted,
    "Auxiliaries weighted by max(0, cos(g0, g_i)) (Du et al. 2018).",
    paper="Du et al., Adapting Auxiliary Losses Using Gradient Similarity, 2018",
    aliases=("CosineWeightedAux",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=False,
    random=False,
)
