"""STCH: see :class:`STCH`."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validate import check_real, check_vector
from ..base import Weighting
from ..registry import register_method

__all__ = ["STCH"]


@register_method(
    "stch",
    description="Smooth Tchebycheff scalarization: smooth max of weighted losses.",
    paper="Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024",
    aliases=("STCH",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class STCH(Weighting):
    """Smooth Tchebycheff scalarization (Lin et al., 2024): S = μ log Σ exp(λᵢ(Lᵢ − zᵢ)/μ).

    w = λ ⊙ softmax(λ ⊙ (L − z)/μ): a smooth max of the weighted losses (→ max as μ → 0).
    λ defaults to 1/k, the ideal point z to 0.
    """


    def __init__(self, mu: float = 1.0, pref_vector: Tensor | None = None, reference: Tensor | None = None) -> None:
        self.mu = check_real("STCH", "mu", mu, low=0.0, low_open=True)
        self.pref_vector = check_vector("STCH", "pref_vector", pref_vector)
        self.reference = check_vector("STCH", "reference", reference)

    def compute(self, *, losses: Tensor) -> Tensor:
        k = losses.shape[-1]
        lam = torch.full((k,), 1.0 / k, dtype=losses.dtype, device=losses.device)
        if self.pref_vector is not None:
            lam = self.pref_vector.to(dtype=losses.dtype, device=losses.device)
        z = 0.0 if self.reference is None else self.reference.to(dtype=losses.dtype, device=losses.device)
        for name, v in (("pref_vector", self.pref_vector), ("reference", self.reference)):
            if v is not None and v.shape[-1] != k:
                raise ValueError(f"{name} has {v.shape[-1]} entries but there are {k} tasks.")
        return lam * torch.softmax(lam * (losses - z) / self.mu, dim=-1)
