"""PrimaryAux with a progress margin: every auxiliary keeps a fraction τ of its own progress.

With the primary gradient g₀ and auxiliary gradients gᵢ (i ≥ 1), the step is

    u = argmax_u ⟨u, g₀⟩ − ½‖u‖²   s.t.   ⟨u, gᵢ/‖gᵢ‖⟩ ≥ τ‖g₀‖   for every auxiliary i,

i.e. ⟨u, gᵢ⟩ ≥ bᵢ := τ‖g₀‖‖gᵢ‖: to first order, auxiliary i gains at least τ times what a step
of the primary's length ‖g₀‖ along its own normalized gradient would give it (‖g₀‖‖gᵢ‖).
τ = 0 is PrimaryAux (no auxiliary loss rises); the constraint is unchanged when gᵢ is rescaled,
and u scales with g₀. The Lagrangian dual is

    min_{λ ≥ 0} ½‖g₀ + Σᵢ λᵢgᵢ‖² − Σᵢ λᵢbᵢ  =  ½λᵀG_AAλ + (G_A0 − b)ᵀλ + ½G₀₀,

a non-negative QP solved exactly by :func:`taskgrad.solvers.nnls`; u = g₀ + Σλᵢgᵢ and the KKT
conditions are λ ≥ 0, ⟨u, gᵢ⟩ ≥ bᵢ, λᵢ(⟨u, gᵢ⟩ − bᵢ) = 0. By Farkas' lemma the constraints are
infeasible iff some λ ≥ 0 has Σλᵢgᵢ = 0 and λᵀb > 0, i.e. (τ > 0, g₀ ≠ 0) iff 0 lies in the
convex hull of the nonzero auxiliary gradients (the dual is then unbounded). That is detected
with MGDA's min-norm point of those gradients; an infeasible problem is solved with τ = 0
instead (plain PrimaryAux, always feasible) and reported in the returned mask.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...solvers import min_norm_simplex, nnls, primary_aux

__all__ = ["progress_margin_weights"]


def progress_margin_weights(
    G: Tensor, tau: float, infeasible_tol: float = 1e-10
) -> tuple[Tensor, Tensor, Tensor]:
    """Weights (1, λ) of the progress-margin step for G (..., k, k), task 0 primary.

    Returns (w, active, infeasible): ``active`` (..., k−1) marks the auxiliary constraints that
    hold with equality (λᵢ > 0), ``infeasible`` (...) the problems solved with τ = 0 instead
    because no u meets every margin (0 is within ``infeasible_tol``·max‖gᵢ‖² of the hull of the
    nonzero auxiliary gradients).
    """
    if tau < 0:
        raise ValueError(f"the progress fraction tau must be ≥ 0, got {tau!r}.")
    k = G.shape[-1]
    Gd = G.double()
    Gd = 0.5 * (Gd + Gd.transpose(-1, -2))
    if k == 1 or tau == 0:
        base = primary_aux(Gd, check_input=False)
        return (
            base.to(G.dtype),
            base[..., 1:] > 0,
            torch.zeros(G.shape[:-2], dtype=torch.bool, device=G.device),
        )
    diag = torch.diagonal(Gd, dim1=-2, dim2=-1).clamp_min(0.0)
    dmax = diag.amax(-1, keepdim=True)
    dead = diag[..., 1:] < torch.finfo(Gd.dtype).tiny  # zero auxiliary gradients: no constraint
    b = tau * diag[..., :1].sqrt() * diag[..., 1:].sqrt()
    Q = Gd[..., 1:, 1:]
    c = Gd[..., 1:, 0] - b
    # Farkas: infeasible iff 0 is in the hull of the live auxiliary gradients (and b > 0)
    eye = torch.eye(k - 1, dtype=Gd.dtype, device=Gd.device)
    live = (~dead).to(Gd.dtype)
    Qh = Q * live.unsqueeze(-1) * live.unsqueeze(-2) + eye * (dead.to(Gd.dtype) * dmax).unsqueeze(
        -1
    )
    mu = min_norm_simplex(Qh, check_input=False)
    hull_sq = torch.einsum("...i,...ij,...j->...", mu, Qh, mu)
    infeasible = (hull_sq <= infeasible_tol * dmax.squeeze(-1)) & (b.amax(-1) > 0) & (~dead).any(-1)
    safe_c = torch.where(infeasible.unsqueeze(-1), Gd[..., 1:, 0], c)
    lam = nnls(Q, safe_c, fixed_zero=dead, check_input=False)
    w = torch.cat([torch.ones_like(lam[..., :1]), lam], -1)
    if bool(infeasible.any()):  # those problems take the τ = 0 step
        w = torch.where(infeasible.unsqueeze(-1), primary_aux(Gd, check_input=False), w)
    return w.to(G.dtype), w[..., 1:] > 0, infeasible
