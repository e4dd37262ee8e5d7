"""Aligned-MTL: align the gradients' principal components (condition number 1).

Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .. import _impl
from .._common import (
    flat_gram,
)
from .._validate import check_choice, check_vector
from ..base import Weighting
from ..registry import register_method

__all__ = ["AlignedMTL", "aligned_mtl_balance"]


@register_method(
    "aligned-mtl",
    description="Aligned-MTL: align the gradients' principal components (condition number 1).",
    paper="Senushkin et al., Independent Component Alignment for Multi-Task Learning, CVPR 2023",
    aliases=("AlignedMTL", "Aligned_MTL"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class AlignedMTL(Weighting):
    """Aligned-MTL (Senushkin et al., 2023): align the task gradients' principal components.

    With G = VΛVᵀ restricted to its rank r (λ > λ_max·k·ε), the aligned Jacobian is
    Ĵ = B J with B = √λ_s V_r Λ_r^{-½} V_rᵀ (condition number 1: ĴĴᵀ = λ_s·I on the range),
    and d = Ĵᵀp for the preference vector p (default 1/k): w = Bp. ``scale_mode`` picks λ_s:
    "min" (smallest nonzero eigenvalue, the paper), "median" or "rmse" (the mean eigenvalue,
    the official code). Rank 0 gives w = p. Same conventions as TorchJD's AlignedMTL.

    ``scale_decoder_grad`` is the official code's option for the task heads: False (its
    default) leaves each head its unweighted gradient, True scales it by the task's weight;
    it becomes the training step's default ``heads`` ("unweighted" / "weighted") through
    ``head_convention``. None (default here) leaves the step's own default ("weighted").
    """

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        scale_mode: Literal["min", "median", "rmse"] = "min",
        scale_decoder_grad: bool | None = None,
    ) -> None:
        self.pref_vector = check_vector("AlignedMTL", "pref_vector", pref_vector)
        self.scale_mode = check_choice(
            "AlignedMTL", "scale_mode", scale_mode, ("min", "median", "rmse")
        )
        if scale_decoder_grad is not None and not isinstance(scale_decoder_grad, bool):
            raise TypeError(
                "AlignedMTL: scale_decoder_grad must be True, False or None, got "
                f"{scale_decoder_grad!r}."
            )
        self.scale_decoder_grad = scale_decoder_grad

    @property
    def head_convention(self) -> str | None:
        """The head-gradient convention the step uses by default ("weighted"/"unweighted"/None)."""
        return (
            None
            if self.scale_decoder_grad is None
            else ("weighted" if self.scale_decoder_grad else "unweighted")
        )

    def compute(self, *, gram: Tensor) -> Tensor:
        Gb, batch = flat_gram(gram)
        k = Gb.shape[-1]
        p = _impl.check_pref(self.pref_vector, k, Gb)
        w = (
            aligned_mtl_balance(Gb, self.scale_mode, eps_dtype=gram.dtype) @ p.unsqueeze(-1)
        ).squeeze(-1)
        return w.to(gram.dtype).reshape(*batch, k)


def aligned_mtl_balance(
    Gb: Tensor, scale_mode: str = "min", eps_dtype: torch.dtype | None = None
) -> Tensor:
    """The balance transformation B (B, k, k) of Aligned-MTL for Gram matrices (B, k, k)."""
    B_, k = Gb.shape[0], Gb.shape[-1]
    lam, V = torch.linalg.eigh(Gb)  # ascending
    eps = torch.finfo(eps_dtype or Gb.dtype).eps
    tol = lam.amax(-1, keepdim=True) * k * eps
    valid = lam > tol
    rank = valid.sum(-1)
    inv_sqrt = torch.where(
        valid, lam.clamp_min(torch.finfo(Gb.dtype).tiny).rsqrt(), torch.zeros_like(lam)
    )
    first = (k - rank).clamp_max(k - 1)  # index of the smallest valid eigenvalue
    if scale_mode == "min":
        idx = first
    elif scale_mode == "median":
        idx = (first + (rank - 1).clamp_min(0) // 2).clamp_max(k - 1)
    else:
        idx = None
    if idx is None:
        scale = (lam * valid).sum(-1) / rank.clamp_min(1)
    else:
        scale = lam.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    Bm = (
        scale.clamp_min(0).sqrt()[:, None, None]
        * (V * inv_sqrt.unsqueeze(-2))
        @ V.transpose(-1, -2)
    )
    eye = torch.eye(k, dtype=Gb.dtype, device=Gb.device).expand(B_, k, k)
    return torch.where((rank == 0)[:, None, None], eye, Bm)
