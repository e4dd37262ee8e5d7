"""Truncated (preconditioned) conjugate gradients for (A + λI) x = b with a matrix-free A.

Stops on convergence (‖r‖ ≤ rtol·‖b‖), after ``max_iter`` iterations, on non-positive curvature
pᵀ(A + λI)p ≤ 0 (A indefinite: the Newton model has no minimizer along p), on a non-finite
product A p, or when the residual has not improved for ``stall_iters`` iterations. The reason is
in :attr:`CGResult.status`; x is always the last finite iterate (0 when the first product failed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CGResult", "conjugate_gradient"]


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    x: the solution estimate (P,). iterations: products A p taken. residual_norm: ‖b − (A+λI)x‖
    (recursive estimate). status: "converged", "max_iter", "negative_curvature", "nonfinite" or
    "stalled". model_value: q(x) = ½xᵀ(A+λI)x − bᵀx (≤ 0 and decreasing along CG iterations).
    curvature: the last pᵀ(A+λI)p / ‖p‖² seen (the one that stopped CG on negative curvature).
    """

    x: Tensor
    iterations: int
    residual_norm: float
    rhs_norm: float
    status: str
    model_value: float
    curvature: float

    @property
    def converged(self) -> bool:
        return self.status == "converged"


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    *,
    damping: float = 0.0,
    max_iter: int = 50,
    rtol: float = 1e-5,
    atol: float = 0.0,
    preconditioner: Tensor | Callable[[Tensor], Tensor] | None = None,
    stall_iters: int = 10,
) -> CGResult:
    """Solve (A + λI) x = b from x₀ = 0 by CG (Hestenes-Stiefel), A given by ``matvec``.

    ``preconditioner``: a positive vector M (P,) ≈ diag(A + λI) (then z = r / M), or a callable
    r ↦ M⁻¹r for a symmetric positive-definite M. Returns a :class:`CGResult`.
    """
    if b.dim() != 1:
        raise ValueError(f"b must be a flat vector (P,), got shape {tuple(b.shape)}.")
    if max_iter < 1:
        raise ValueError(f"max_iter must be ≥ 1, got {max_iter}.")
    if damping < 0 or not torch.isfinite(torch.tensor(damping)):
        raise ValueError(f"damping must be finite and ≥ 0, got {damping}.")
    if isinstance(preconditioner, Tensor):
        if preconditioner.shape != b.shape:
            raise ValueError(
                f"a diagonal preconditioner must have shape {tuple(b.shape)}, got "
                f"{tuple(preconditioner.shape)}."
            )
        if not bool((preconditioner > 0).all()) or not bool(torch.isfinite(preconditioner).all()):
            raise ValueError(
                "a diagonal preconditioner must be finite and positive (clamp it from below)."
            )
        diag = preconditioner
        precond: Callable[[Tensor], Tensor] | None = lambda r: r / diag  # noqa: E731
    else:
        precond = preconditioner

    x = torch.zeros_like(b)
    r = b.clone()
    z = precond(r) if precond is not None else r
    p = z.clone()
    rz = torch.dot(r, z)
    b_norm = float(torch.linalg.vector_norm(b))
    r_norm = b_norm
    tol = max(rtol * b_norm, atol)
    best, since_best = r_norm, 0
    curvature = float("nan")
    status = "max_iter"
    it = 0
    if r_norm <= tol:
        status = "converged"
    while status == "max_iter" and it < max_iter:
        Ap = matvec(p)
        if damping:
            Ap = Ap + damping * p
        it += 1
        pAp = torch.dot(p, Ap)
        pp = torch.dot(p, p)
        if not bool(torch.isfinite(Ap).all()) or not bool(torch.isfinite(pAp)):
            status = "nonfinite"
            break
        curvature = float(pAp / pp) if float(pp) > 0 else float("nan")
        if float(pAp) <= 0.0:
            status = "negative_curvature"
            break
        alpha = rz / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        r_norm = float(torch.linalg.vector_norm(r))
        if r_norm <= tol:
            status = "converged"
            break
        if r_norm < best * (1 - 1e-3):
            best, since_best = r_norm, 0
        else:
            since_best += 1
            if since_best >= stall_iters:
                status = "stalled"
                break
        z = precond(r) if precond is not None else r
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    # q(x) = ½xᵀAx − bᵀx = −½(bᵀx + rᵀx) with r = b − Ax (the recursive residual).
    model_value = float(-0.5 * (torch.dot(b, x) + torch.dot(r, x)))
    return CGResult(
        x=x,
        iterations=it,
        residual_norm=r_norm,
        rhs_norm=b_norm,
        status=status,
        model_value=model_value,
        curvature=curvature,
    )
