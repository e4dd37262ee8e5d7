"""IMTL-G: see :class:`IMTLG`."""

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
    aliases=("IMTLG", "IMTL"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=False,
    random=False,
)
class IMTLG(Weighting):
    """IMTL-G (Liu et al., 2021), in the pseudo-inverse form of Quinton & Rey (2024).

    The update d = Jᵀw has equal projections on every unit gradient, ⟨d, gᵢ/‖gᵢ‖⟩ = const:
    Gw ∝ σ (σᵢ = ‖gᵢ‖), so w = G⁺σ / 1ᵀG⁺σ (0 when 1ᵀG⁺σ vanishes). With linearly independent
    gradients this is the paper's closed form; the direction of d is invariant to rescaling any
    task's loss.
    """

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        Gb, batch = flat_gram(gram)
        k = Gb.shape[-1]
        v = (torch.linalg.pinv(Gb, hermitian=True) @ diag_norms(Gb).unsqueeze(-1)).squeeze(-1)
        s = v.sum(-1, keepdim=True)
        tiny = s.abs() <= 1e-12 * v.abs().sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        w = torch.where(tiny, torch.zeros_like(v), v / torch.where(tiny, torch.ones_like(s), s))
        return w.to(gram.dtype).reshape(*batch, k)
