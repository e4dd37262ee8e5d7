"""FairGrad: alpha-fair allocation (G w)_i = w_i^(-1/alpha) (exact Newton solve).

Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _impl
from .._impl import Impl
from .._validate import check_int, check_real
from ..base import Weighting
from ..registry import register_method
from ._alpha_fair import fair_weights
from ._zoo_checks import check_max_norm

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
    ⟨gᵢ, d⟩ > 0 for all i) raise :class:`UndefinedMethodError`, a solve that does not converge in
    ``max_iter`` Newton steps (e.g. a huge alpha) :class:`MethodConvergenceError`.

    Reference-code options: ``scale_by_k`` multiplies the weights by k (the official code
    overwrites the shared gradient with k·Σwᵢgᵢ); ``max_norm`` (None: off) clips the shared
    gradient to that norm, applied by the training step (its default ``max_norm``).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        max_iter: int = 100,
        impl: Impl = "auto",
        max_norm: float | None = None,
        scale_by_k: bool = False,
    ) -> None:
        if not isinstance(scale_by_k, bool):
            raise TypeError(f"scale_by_k must be True or False, got {scale_by_k!r}.")
        self.max_norm = check_max_norm(max_norm)
        self.scale_by_k = scale_by_k
        self.alpha = check_real("FairGrad", "alpha", alpha, low=0.0)
        self.max_iter = check_int("FairGrad", "max_iter", max_iter, low=0)
        self.impl = _impl.check_impl(impl)

    def compute(self, *, gram: Tensor) -> Tensor:
        k = gram.shape[-1]
        factor = float(k) if self.scale_by_k else 1.0
        if self.alpha == 0:
            return torch.full(gram.shape[:-1], factor / k, dtype=gram.dtype, device=gram.device)
        w = fair_weights(
            gram, self.alpha, self.max_iter, self.impl, f"FairGrad(alpha={self.alpha:g})"
        )
        return factor * w.to(gram.dtype)
