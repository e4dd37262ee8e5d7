"""Second-order steps on the weighted multi-task objective f = Σᵢ wᵢLᵢ (w from any method).

* Products: :func:`hvp` (forward-over-reverse, ``torch.func``), :func:`hvp_from_graph` (double
  backward), :func:`gnvp` / :func:`gnvp_from_graph` (Gauss-Newton Jᵀ∇²ℓ J v), batched over
  vectors; :class:`HessianOperator` / :class:`GaussNewtonOperator` for repeated products.
* :func:`conjugate_gradient`: truncated, preconditioned CG with explicit stopping reasons.
* Optimizers: :class:`NewtonCG`, :class:`GaussNewtonCG` (damped, line search, per-step ``info``),
  :class:`SophiaH` (Hutchinson diagonal alone); :func:`hutchinson_diagonal`,
  :class:`HutchinsonDiagonal`.
"""

from .cg import CGResult, conjugate_gradient
from .hutchinson import HutchinsonDiagonal, SophiaH, hutchinson_diagonal
from .optim import GaussNewtonCG, NewtonCG
from .products import (
    CurvatureOperator,
    GaussNewtonOperator,
    HessianOperator,
    gnvp,
    gnvp_from_graph,
    hvp,
    hvp_from_graph,
    weighted_objective,
)

__all__ = [
    "CGResult",
    "CurvatureOperator",
    "GaussNewtonCG",
    "GaussNewtonOperator",
    "HessianOperator",
    "HutchinsonDiagonal",
    "NewtonCG",
    "SophiaH",
    "conjugate_gradient",
    "gnvp",
    "gnvp_from_graph",
    "hutchinson_diagonal",
    "hvp",
    "hvp_from_graph",
    "weighted_objective",
]
