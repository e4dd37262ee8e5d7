"""IMTL-G: equal projections of the update on every unit task gradient.

Liu et al., Towards Impartial Multi-task Learning, ICLR 2021.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._common import (
    diag_norms,
    flat_gram,
)
from ..base import Weighting
from ..registry import register_method

__all__ = ["IMTLG"]


@register_method(
    "imtl-g",
    description="IMTL-G: equal projections of the update on every unit task gradient.",
    paper="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021",
    aliases=("IMTLG",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,  # the line of d is invariant, its sign follows that of 1ᵀG⁺σ
    stateful=False,
    random=False,
)
class IMTLG(Weighting):
    """IMTL-G (Liu et al., 2021), in the pseudo-inverse form of Quinton & Rey (2024).

    The update d = Jᵀw has equal projections on every unit gradient, ⟨d, gᵢ/‖gᵢ‖⟩ = const:
    Gw ∝ σ (σᵢ = ‖gᵢ‖), so w = G⁺σ / 1ᵀG⁺σ (Σwᵢ = 1 as in the paper, LibMTL and TorchJD; 0 when
    1ᵀG⁺σ vanishes). Where 1ᵀG⁺σ < 0 (never for k = 2) the common projection is negative and d
    raises every loss, as the paper's formula does.

    Scale-free computation: with D = diag(σ) and the cosine matrix Ĝ = D⁻¹GD⁻¹ (unit diagonal),
    G⁺σ = D⁻¹Ĝ⁺1 for independent gradients, so w is computed from Ĝ, whose conditioning does not
    depend on the gradient norms. The line of d is then invariant to rescaling any task's loss
    (its sign follows that of 1ᵀG⁺σ, which rescaling can flip) for norm ratios as small as the Gram
    entries stay normal numbers (σᵢσⱼ ≳ 1e-300 in
    float64, 1e-37 in float32), provided G is accurate relative to each entry (a Gram matrix
    accumulated in float64 is). Zero gradients get weight 0.
    """

    def compute(self, *, gram: Tensor) -> Tensor:
        Gb, batch = flat_gram(gram)
        k = Gb.shape[-1]
        sig = diag_norms(Gb)
        alive = sig > 0
        inv = torch.where(
            alive, 1.0 / torch.where(alive, sig, torch.ones_like(sig)), torch.zeros_like(sig)
        )
        cosm = Gb * inv.unsqueeze(-1) * inv.unsqueeze(-2)
        vhat = (torch.linalg.pinv(cosm, hermitian=True) @ alive.to(Gb.dtype).unsqueeze(-1)).squeeze(
            -1
        )
        v = vhat * inv
        s = v.sum(-1, keepdim=True)
        tiny = s.abs() <= 1e-12 * v.abs().sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        w = torch.where(tiny, torch.zeros_like(v), v / torch.where(tiny, torch.ones_like(s), s))
        return w.to(gram.dtype).reshape(*batch, k)
