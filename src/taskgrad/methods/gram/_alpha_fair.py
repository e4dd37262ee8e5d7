"""α-fair weights (Nash-MTL, FairGrad): the w > 0 with (Gw)ᵢ = wᵢ^(−1/α), by Newton's method."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _impl
from .._common import (
    flat_gram,
    work_dtype,
)
from .._impl import Impl
from ..errors import UndefinedMethodError

__all__ = ["alpha_fair_weights"]


def _fair_objective(Gs: Tensor, x: Tensor, a: float) -> Tensor:
    quad = 0.5 * torch.einsum("bi,bij,bj->b", x, Gs, x)
    if a == 1.0:
        h = -torch.log(x).sum(-1)
    else:
        e = (a - 1.0) / a
        h = -(x.pow(e) / e).sum(-1)
    return quad + h


def alpha_fair_weights(
    G: Tensor, alpha: float, max_iter: int = 100, impl: Impl = "auto"
) -> tuple[Tensor, Tensor]:
    """α-fair weights: the w > 0 with (Gw)ᵢ = wᵢ^(−1/α), batched over G (..., k, k).

    They are the unique minimizer of the strictly convex f(w) = ½wᵀGw + Σ h(wᵢ) with
    h'(t) = −t^(−1/α) (h = −log for α = 1: Nash-MTL's Gw = 1/w). Solved by Newton's method with
    a fraction-to-boundary rule and Armijo backtracking, on G/s (s = mean diag G, then
    w = w_s·s^(−α/(α+1))), until max |(Gw)ᵢwᵢ^(1/α) − 1| ≤ 1e-12 (float64; 1e-5 in float32) or
    the Newton decrement² is below 1e-24 (Newton converges quadratically).

    Returns (w, ok) where ``ok`` marks problems that converged; a solution exists iff some d has
    ⟨gᵢ, d⟩ > 0 for all i (no zero gradient, 0 not in the convex hull of the gradients).

    ``impl`` (see the module doc): ``"numba"`` runs the same iteration compiled, in float64 (also
    for a float32 Gram matrix on a GPU, whose torch path works in float32 with rtol 1e-5).
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 here, got {alpha!r}.")
    if _impl.use_host(_impl.check_impl(impl), G):
        wn, okn = _impl.kernel("alpha_fair").alpha_fair(_impl.host_gram(G), float(alpha), int(max_iter))
        w = _impl.from_host(wn, G.shape[:-1], G, work_dtype(G))
        return w, torch.from_numpy(okn).to(G.device).reshape(G.shape[:-2])
    Gb, batch = flat_gram(G)
    B, k = Gb.shape[0], Gb.shape[-1]
    diag = torch.diagonal(Gb, dim1=-2, dim2=-1)
    s = diag.mean(-1)
    ok = (s > 0) & (diag > 1e-14 * s.unsqueeze(-1)).all(-1)
    s_safe = torch.where(ok, s, torch.ones_like(s))
    Gs = Gb / s_safe[:, None, None]
    Gs = torch.where(ok[:, None, None], Gs, torch.eye(k, dtype=Gb.dtype, device=Gb.device).expand(B, k, k))
    d = torch.diagonal(Gs, dim1=-2, dim2=-1)
    x = d.pow(-alpha / (alpha + 1.0))
    # scale the start so that the diagonal model's equation holds on average: t·x is exact when
    # G is diagonal; for a general G start from the best multiple of x.
    gx = torch.einsum("bi,bij,bj->b", x, Gs, x)
    t = (k / gx.clamp_min(torch.finfo(Gs.dtype).tiny)).pow(alpha / (alpha + 1.0))
    x = x * t.unsqueeze(-1)
    converged = torch.zeros(B, dtype=torch.bool, device=Gb.device)
    inv_a = 1.0 / alpha
    eye = torch.eye(k, dtype=Gb.dtype, device=Gb.device)
    rtol = 1e-12 if Gb.dtype == torch.float64 else 1e-5
    for _ in range(max_iter):
        grad = (Gs @ x.unsqueeze(-1)).squeeze(-1) - x.pow(-inv_a)
        H = Gs + torch.diag_embed(inv_a * x.pow(-inv_a - 1.0))
        L, info = torch.linalg.cholesky_ex(H + 1e-300 * eye)
        step = -torch.cholesky_solve(grad.unsqueeze(-1), L).squeeze(-1)
        dec = -(grad * step).sum(-1)  # Newton decrement²
        # relative residual of the fixed point (Gw)ᵢ wᵢ^(1/α) = 1, scale-free
        resid = ((Gs @ x.unsqueeze(-1)).squeeze(-1) * x.pow(inv_a) - 1.0).abs().amax(-1)
        newly = ((dec <= 1e-24) | (resid <= rtol)) & (info == 0) & torch.isfinite(x).all(-1)
        converged = converged | newly
        if bool(converged.all()):
            break
        neg = step < 0
        ratio = torch.where(neg, -x / torch.where(neg, step, -torch.ones_like(step)), torch.full_like(x, float("inf")))
        tmax = (0.99 * ratio.amin(-1)).clamp_max(1.0)
        f0 = _fair_objective(Gs, x, alpha)
        tstep = tmax
        accept = converged.clone()
        for _ls in range(60):
            xn = x + tstep.unsqueeze(-1) * step
            fn = _fair_objective(Gs, xn.clamp_min(torch.finfo(x.dtype).tiny), alpha)
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
    ok = ok & converged & torch.isfinite(x).all(-1)
    w = x * s_safe.pow(-alpha / (alpha + 1.0)).unsqueeze(-1)
    return w.reshape(*batch, k), ok.reshape(batch)


def _raise_undefined(name: str) -> None:
    raise UndefinedMethodError(
        f"{name} is undefined for this Gram matrix: it needs a direction d with ⟨gᵢ, d⟩ > 0 for "
        "every task, and none exists (a task gradient is zero, or 0 lies in the convex hull of "
        "the gradients, e.g. two opposite gradients). Use a method defined everywhere (UPGrad, "
        "MGDA, CAGrad) or skip such steps."
    )
