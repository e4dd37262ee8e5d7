"""Hybrid IMTL (Liu et al., ICLR 2021): IMTL-L loss scales and IMTL-G gradient weights in one."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ..loss._learned_scale import _LearnedScaleState
from ..registry import register_method
from .imtl_g import IMTLG

__all__ = ["HybridIMTL"]


@register_method(
    "imtl-hybrid",
    description=(
        "Hybrid IMTL: learned loss scales (IMTL-L) and IMTL-G on the scaled gradients in one "
        "method."
    ),
    paper="Liu et al., Towards Impartial Multi-task Learning, ICLR 2021",
    aliases=("HybridIMTL", "hybrid-imtl", "IMTL"),  # LibMTL's IMTL is the hybrid method
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class HybridIMTL(_LearnedScaleState):
    """Hybrid IMTL (Liu et al., "Towards impartial multi-task learning", ICLR 2021; LibMTL's IMTL).

    The losses are scaled as L̃ᵢ = e^(sᵢ)Lᵢ − sᵢ (IMTL-L) and IMTL-G runs on the scaled gradients
    e^(sᵢ)gᵢ: α = IMTL-G(D G D) with D = diag(e^s), and d = Σ αᵢ e^(sᵢ) gᵢ, i.e. w = α ⊙ e^s.
    s (init 0) takes one step of its own optimizer (``optimizer``, ``lr``) per call on
    ∂L̃ᵢ/∂sᵢ = e^(sᵢ)Lᵢ − 1 (in LibMTL s is trained by the model's optimizer).
    """

    needs = frozenset({"gram", "losses"})

    def __init__(
        self, lr: float = 1e-3, optimizer: Literal["sgd", "adam"] = "adam", init: float = 0.0
    ) -> None:
        super().__init__(lr, optimizer, init)
        self._imtlg = IMTLG()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None and losses is not None
        s = self._s.get(losses)
        with torch.no_grad():
            e = torch.exp(s.detach()).to(gram.dtype)
            alpha = self._imtlg(gram=gram * e.unsqueeze(-1) * e.unsqueeze(-2))
            grad = torch.exp(s.detach()) * losses.to(s.dtype) - 1.0
        self._s.step(grad)
        return (alpha * e).to(gram.dtype)
