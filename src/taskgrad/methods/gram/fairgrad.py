"""FairGrad: see :class:`FairGrad`."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _impl
from .._impl import Impl
from ..base import Weighting
from ..registry import register_method
from ._alpha_fair import _raise_undefined, alpha_fair_weights

__all__ = ["FairGrad"]


@register_method(
    "fairgrad",
    description="FairGrad: alpha-fair allocation (G w)_i = w_i^(-1/alpha) (exact Newton solve).",
    paper="Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024",
    aliases=("FairGrad",),
    defined="zero-not-in-hull",
    non_conflicting=True,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=False,
    random=False,
)
class FairGrad(Weighting):
    """FairGrad (Ban & Ji, 2024): α-fair resource allocation among tasks, solved exactly.

    w > 0 solves (Gw)ᵢ = wᵢ^(−1/α) (Equation 4 of the paper), the unique minimizer of a
    strictly convex function (see :func:`alpha_fair_weights`); α = 1 is Nash-MTL's
    equation, α → ∞ approaches MGDA-like max-min fairness, and α = 0 is linear scalarization
    (uniform weights 1/k, as in the paper and TorchJD). Undefined problems (no d with
    ⟨gᵢ, d⟩ > 0 for all i) raise :class:`UndefinedMethodError`.
    """

    def __init__(self, alpha: float = 1.0, max_iter: int = 100, impl: Impl = "auto") -> None:
        if alpha < 0 or alpha != alpha:
            raise ValueError(f"alpha must be ≥ 0, got {alpha!r}.")
        self.alpha = alpha
        self.max_iter = max_iter
        self.impl = _impl.check_impl(impl)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        k = gram.shape[-1]
        if self.alpha == 0:
            return torch.full(gram.shape[:-1], 1.0 / k, dtype=gram.dtype, device=gram.device)
        w, ok = alpha_fair_weights(gram, self.alpha, self.max_iter, self.impl)
        if not bool(ok.all()):
            _raise_undefined(f"FairGrad(alpha={self.alpha})")
        return w.to(gram.dtype)
