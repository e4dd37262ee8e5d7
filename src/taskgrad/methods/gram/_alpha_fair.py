"""α-fair weights (Nash-MTL, FairGrad): the w > 0 with (Gw)ᵢ = wᵢ^(−1/α), by Newton's method.

Scale-free formulation: with σᵢ = ‖gᵢ‖, D = diag(σ) and the cosine matrix Ĝ = D⁻¹GD⁻¹, w = D⁻¹y
turns the equation into Ĝy = c ⊙ y^(−1/α) with cᵢ = σᵢ^(1/α − 1) (c = 1 for Nash-MTL), whose
conditioning does not depend on the gradient norms. Its solution is the unique minimizer of the
strictly convex ½yᵀĜy + Σ cᵢh(yᵢ), h'(t) = −t^(−1/α) (h = −log for α = 1).

A solution exists iff some d has ⟨gᵢ, d⟩ > 0 for every i, i.e. no gradient is zero and 0 is not in
the convex hull of the gradients. When Newton's method does not converge, the min-norm point of
the hull of the unit gradients (MGDA on Ĝ) decides: at most ``HULL_TOL`` (0 in the hull, to the
accuracy of the min-norm solve) means undefined, otherwise the solve did not converge.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _impl
from .._common import flat_gram, work_dtype
from .._impl import Impl
from ..errors import MethodConvergenceError, UndefinedMethodError

__all__ = [
    "CONVERGED",
    "NOT_CONVERGED",
    "UNDEFINED",
    "alpha_fair_solve",
    "alpha_fair_weights",
    "fair_weights",
]

# statuses per problem
CONVERGED, UNDEFINED, NOT_CONVERGED = 0, 1, 2
_LIMITED = 3  # kernel status: stopped at the rounding level above rtol (the hull decides)
# the min-norm solve resolves ‖Σwᵢuᵢ‖² to ~ε, so ‖Σwᵢuᵢ‖ to ~√ε (1.5e-8 in float64; the bound
# is scaled by √ε in float32)
HULL_TOL = 1e-7


def _fair_objective(Gs: Tensor, c: Tensor, x: Tensor, a: float) -> Tensor:
    quad = 0.5 * torch.einsum("bi,bij,bj->b", x, Gs, x)
    if a == 1.0:
        h = -(c * torch.log(x)).sum(-1)
    else:
        e = (a - 1.0) / a
        h = -(c * x.pow(e) / e).sum(-1)
    return quad + h


def _cosine_form(Gb: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(Ĝ, c, 1/σ, zero) for Gram matrices (B, k, k): cosine matrix (identity rows for zero
    gradients), cᵢ = σᵢ^(1/α − 1), 1/σ (0 for a zero gradient) and the zero-gradient mask (B,).
    """
    sig = torch.diagonal(Gb, dim1=-2, dim2=-1).clamp_min(0.0).sqrt()
    alive = sig > 0
    one = torch.ones_like(sig)
    inv = torch.where(alive, 1.0 / torch.where(alive, sig, one), torch.zeros_like(sig))
    Gs = Gb * inv.unsqueeze(-1) * inv.unsqueeze(-2)
    k = Gb.shape[-1]
    eye = torch.eye(k, dtype=Gb.dtype, device=Gb.device)
    dead_rows = (~alive).unsqueeze(-1) | (~alive).unsqueeze(-2)
    Gs = torch.where(dead_rows, eye.expand_as(Gs), Gs)
    Gs = 0.5 * (Gs + Gs.transpose(-1, -2))
    c = torch.where(alive, torch.where(alive, sig, one).pow(1.0 / alpha - 1.0), one)
    return Gs, c, inv, ~alive.all(-1)


def _newton(Gs: Tensor, c: Tensor, alpha: float, max_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    """y > 0 with Ĝy = c ⊙ y^(−1/α) (B, k) by damped Newton, the converged mask (B,) and the
    mask of those that stopped at the rounding level of (Ĝy)ᵢ above rtol (the caller checks
    that 0 is not in the hull there: a diverging iterate also cancels).
    """
    B, k = Gs.shape[0], Gs.shape[-1]
    inv_a = 1.0 / alpha
    pw = alpha / (alpha + 1.0)
    # the diagonal model's solution y = c^(α/(α+1)), scaled by the best multiple t
    x = c.pow(pw)
    gx = torch.einsum("bi,bij,bj->b", x, Gs, x)
    num = (c * x.pow(1.0 - inv_a)).sum(-1)
    t = (num / gx.clamp_min(torch.finfo(Gs.dtype).tiny)).pow(pw)
    x = x * t.unsqueeze(-1)
    converged = torch.zeros(B, dtype=torch.bool, device=Gs.device)
    limited = torch.zeros(B, dtype=torch.bool, device=Gs.device)
    eye = torch.eye(k, dtype=Gs.dtype, device=Gs.device)
    rtol = 1e-12 if Gs.dtype == torch.float64 else 1e-5
    eps = torch.finfo(Gs.dtype).eps
    for _ in range(max_iter):
        Gx = (Gs @ x.unsqueeze(-1)).squeeze(-1)
        grad = Gx - c * x.pow(-inv_a)
        H = Gs + torch.diag_embed(inv_a * c * x.pow(-inv_a - 1.0))
        L, info = torch.linalg.cholesky_ex(H + 1e-300 * eye)
        step = -torch.cholesky_solve(grad.unsqueeze(-1), L).squeeze(-1)
        dec = -(grad * step).sum(-1)  # Newton decrement²
        # relative residual of the fixed point (Ĝy)ᵢ yᵢ^(1/α) / cᵢ = 1, scale-free; it cannot go
        # below the rounding of (Ĝy)ᵢ, ~kε·Σⱼ|Ĝᵢⱼyⱼ|/|(Ĝy)ᵢ| (cancellation in the sum)
        resid = (Gx * x.pow(inv_a) / c - 1.0).abs().amax(-1)
        absGx = (Gs.abs() @ x.abs().unsqueeze(-1)).squeeze(-1)
        floor = (8 * k * eps) * (absGx / Gx.abs().clamp_min(torch.finfo(Gs.dtype).tiny)).amax(-1)
        good = (info == 0) & torch.isfinite(x).all(-1) & ~converged
        exact = ((dec <= 1e-32) | (resid <= rtol)) & good
        at_floor = (resid <= floor) & good & ~exact
        limited = limited | at_floor
        converged = converged | exact | at_floor
        if bool(converged.all()):
            break
        neg = step < 0
        ratio = torch.where(
            neg,
            -x / torch.where(neg, step, -torch.ones_like(step)),
            torch.full_like(x, float("inf")),
        )
        tmax = (0.99 * ratio.amin(-1)).clamp_max(1.0)
        f0 = _fair_objective(Gs, c, x, alpha)
        tstep = tmax
        accept = converged.clone()
        for _ls in range(60):
            xn = x + tstep.unsqueeze(-1) * step
            fn = _fair_objective(Gs, c, xn.clamp_min(torch.finfo(x.dtype).tiny), alpha)
            # near the optimum f cannot resolve the decrease: take the (quadratically convergent)
            # full Newton step there
            good = (fn <= f0 - 1e-4 * tstep * dec) | (dec <= 1e-8)
            accept_now = good & ~accept
            x = torch.where(accept_now.unsqueeze(-1), xn, x)
            accept = accept | good
            if bool(accept.all()):
                break
            tstep = torch.where(accept, tstep, 0.5 * tstep)
        if not bool(torch.isfinite(x).all()):
            break
    return x, converged & torch.isfinite(x).all(-1), limited


def _zero_in_hull(Gs: Tensor) -> Tensor:
    """(B,) whether 0 lies in the convex hull of the unit gradients with cosine matrix Ĝ."""
    w = _impl.min_norm_weights(Gs, "torch")
    tol = HULL_TOL * (torch.finfo(Gs.dtype).eps / torch.finfo(torch.float64).eps) ** 0.5
    return torch.einsum("bi,bij,bj->b", w, Gs, w).clamp_min(0.0).sqrt() <= tol


def alpha_fair_solve(
    G: Tensor, alpha: float, max_iter: int = 100, impl: Impl = "auto"
) -> tuple[Tensor, Tensor]:
    """α-fair weights for G (..., k, k) in the working dtype, and a status per problem (...):
    ``CONVERGED``, ``UNDEFINED`` (a zero gradient, or 0 in the convex hull of the gradients) or
    ``NOT_CONVERGED`` (a solution exists but Newton's method did not reach it in ``max_iter``
    steps). ``impl="numba"`` runs the same iteration compiled, in float64.
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 here, got {alpha!r}.")
    Gb, batch = flat_gram(G)
    if _impl.use_host(_impl.check_impl(impl), G):
        wn, stn = _impl.kernel("alpha_fair").alpha_fair(
            _impl.host_gram(G), float(alpha), int(max_iter)
        )
        w = torch.from_numpy(wn).to(device=G.device, dtype=work_dtype(G))
        status = torch.from_numpy(stn).to(G.device)
        check = (status == NOT_CONVERGED) | (status == _LIMITED)
        if bool(check.any()):
            Gs, _, _, _ = _cosine_form(Gb, alpha)
            undefined = check & _zero_in_hull(Gs)
            status = torch.where(undefined, torch.full_like(status, UNDEFINED), status)
        status = torch.where(status == _LIMITED, torch.full_like(status, CONVERGED), status)
        return w.reshape(*batch, G.shape[-1]), status.reshape(batch)
    Gs, c, inv, zero = _cosine_form(Gb, alpha)
    y, conv, limited = _newton(Gs, c, alpha, max_iter)
    w = y * inv
    status = torch.full(conv.shape, CONVERGED, dtype=torch.long, device=G.device)
    status = torch.where(conv, status, torch.full_like(status, NOT_CONVERGED))
    check = (~conv | limited) & ~zero
    if bool(check.any()):
        status = torch.where(check & _zero_in_hull(Gs), torch.full_like(status, UNDEFINED), status)
    status = torch.where(zero, torch.full_like(status, UNDEFINED), status)
    return w.reshape(*batch, G.shape[-1]), status.reshape(batch)


def alpha_fair_weights(
    G: Tensor, alpha: float, max_iter: int = 100, impl: Impl = "auto"
) -> tuple[Tensor, Tensor]:
    """α-fair weights: the w > 0 with (Gw)ᵢ = wᵢ^(−1/α), batched over G (..., k, k).

    They are the unique minimizer of the strictly convex ½wᵀGw + Σ h(wᵢ) with h'(t) = −t^(−1/α)
    (h = −log for α = 1: Nash-MTL's Gw = 1/w), solved in the scale-free form of this module's
    doc by Newton's method with a fraction-to-boundary rule and Armijo backtracking, until
    max |(Gw)ᵢwᵢ^(1/α) − 1| ≤ 1e-12 (float64; 1e-5 in float32; or the rounding level of (Gw)ᵢ
    where its sum cancels) or the Newton decrement² is below
    1e-32 (rounding level; Newton converges quadratically).

    Returns (w, ok) where ``ok`` marks problems that converged (see :func:`alpha_fair_solve`
    for why the others did not). ``impl``: ``"numba"`` runs the same iteration compiled, in
    float64 (also for a float32 Gram matrix on a GPU, whose torch path works in float32).
    """
    w, status = alpha_fair_solve(G, alpha, max_iter, impl)
    return w, status == CONVERGED


def fair_weights(G: Tensor, alpha: float, max_iter: int, impl: Impl, name: str) -> Tensor:
    """α-fair weights, raising :class:`UndefinedMethodError` where no solution exists and
    :class:`MethodConvergenceError` where Newton's method did not reach it.
    """
    w, status = alpha_fair_solve(G, alpha, max_iter, impl)
    if bool((status == UNDEFINED).any()):
        raise UndefinedMethodError(
            f"{name} is undefined for this Gram matrix: it needs a direction d with ⟨gᵢ, d⟩ > 0 "
            "for "
            "every task, and none exists (a task gradient is zero, or 0 lies in the convex hull of "
            "the gradients, e.g. two opposite gradients). Use a method defined everywhere (UPGrad, "
            "MGDA, CAGrad), or on_undefined='skip' (or a fallback method) in taskgrad.backward."
        )
    if bool((status == NOT_CONVERGED).any()):
        raise MethodConvergenceError(
            f"{name}: Newton's method did not converge in max_iter={max_iter} steps although a "
            "solution exists; raise max_iter"
            + (
                " or use a smaller alpha (large alpha approaches MGDA: use MGDA)"
                if alpha != 1.0
                else ""
            )
            + "."
        )
    return w
