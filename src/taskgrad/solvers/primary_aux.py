"""The primary/auxiliary problem and MGDA's min-norm problem, solved exactly on Gram matrices.

Task gradients are the rows g_1..g_k of J and G = J Jᵀ. All functions return weights w with the
update direction u = Jᵀw, so that a single backward of Σ wᵢ Lᵢ applies it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_gram
from .nnls import SolverInfo, _default_compute_dtype, _pivot, _rescale, _scaled_residual, _tolerances

__all__ = [
    "min_norm_simplex",
    "primary_aux",
    "primary_aux_frank_wolfe",
    "primary_aux_kkt_residual",
]


def _flatten(G: Tensor, work: torch.dtype) -> tuple[Tensor, torch.Size]:
    batch = G.shape[:-2]
    k = G.shape[-1]
    Gb = G.to(work).reshape(-1, k, k)
    return 0.5 * (Gb + Gb.transpose(-1, -2)), batch


def _zero_gradients(Gb: Tensor, eps: float) -> Tensor:
    """(B, k) mask of tasks whose squared gradient norm is at most eps·max_j ‖g_j‖², or is below
    the smallest normal number of the dtype (a subnormal ‖g‖² has too few bits to give a direction)."""
    diag = torch.diagonal(Gb, dim1=-2, dim2=-1)
    dmax = diag.amax(-1, keepdim=True)
    return (diag <= eps * dmax) | (diag < torch.finfo(Gb.dtype).tiny)


def _info(iters: Tensor, res: Tensor, conv: Tensor, batch: torch.Size, dtype: torch.dtype) -> SolverInfo:
    return SolverInfo(iters.reshape(batch), res.to(dtype).reshape(batch), conv.reshape(batch))


def _single_aux(Gb: Tensor, eps: float) -> Tensor:
    """Closed form for one auxiliary: λ = relu(−⟨g0, g1⟩)/‖g1‖², and 0 for a zero g1."""
    g01 = Gb[:, 0, 1]
    g11 = Gb[:, 1, 1]
    dead = _zero_gradients(Gb, eps)[:, 1]
    lam = torch.where(dead, torch.zeros_like(g11), torch.relu(-g01) / torch.where(dead, torch.ones_like(g11), g11))
    return torch.stack([torch.ones_like(lam), lam], -1)


def _projection(
    Gb: Tensor,
    eps: float,
    m: Tensor | None,
    rho: Tensor | None,
    free: Tensor | None,
    max_iter: int,
    residual: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """λ ≥ 0 minimizing ½‖g0 + Σ λᵢgᵢ‖² − ρ Σ λᵢmᵢ; returns (λ, free set, iters, conv, residual)."""
    Q = Gb[:, 1:, 1:]
    c = Gb[:, 1:, 0]
    if m is not None:
        c = c - rho.unsqueeze(-1) * m
    dead = _zero_gradients(Gb, eps)[:, 1:]
    Qs, cs, d, gamma, zero = _rescale(Q, c, 0.0)
    zero = zero | dead
    tol, ridge = _tolerances(Gb.dtype)
    xs, free, iters, conv = _pivot(Qs, cs, zero, tol, ridge, max_iter, free)
    res = _scaled_residual(Qs, cs, xs) if residual else None
    return xs * d * gamma, free, iters, conv, res


def _mixed(
    Gb: Tensor, n: int, eps: float, max_iter: int, residual: bool = True
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """min ‖Σ_{j<n} αⱼgⱼ + Σ_{i≥n} λᵢgᵢ‖² over α in the simplex and λ ≥ 0.

    Reduced to a non-negative least-distance problem (Lawson & Hanson, ch. 23): with b = (1ₙ, 0),
    y ≥ 0 minimizing ½ yᵀ(G/s + bbᵀ)y − bᵀy gives w = y / Σ_{j<n} yⱼ (s = max diag G).
    """
    k = Gb.shape[-1]
    dmax = torch.diagonal(Gb, dim1=-2, dim2=-1).amax(-1)
    s = torch.where(dmax > 0, dmax, torch.ones_like(dmax))
    b = torch.zeros(k, dtype=Gb.dtype, device=Gb.device)
    b[:n] = 1.0
    Q = Gb / s[:, None, None] + b[:, None] * b[None, :]
    c = -b.expand(Gb.shape[0], k)
    dead = _zero_gradients(Gb, eps)
    dead[:, :n] = False  # a zero primary gradient is a valid MGDA answer (d = 0)
    Qs, cs, d, gamma, zero = _rescale(Q, c, 0.0)
    zero = zero | dead
    tol, ridge = _tolerances(Gb.dtype)
    xs, _, iters, conv = _pivot(Qs, cs, zero, tol, ridge, max_iter)
    res = _scaled_residual(Qs, cs, xs) if residual else None
    y = xs * d * gamma
    w = y / y[:, :n].sum(-1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
    return w, iters, conv, res


def _margin_projection(
    Gb: Tensor, eps: float, m: Tensor, max_iter: int, max_outer: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Closest u to g0 with ⟨u, gᵢ⟩ ≥ mᵢ‖u‖ (a second-order cone constraint per auxiliary).

    KKT: u = κ·v with v = g0 + Σ λᵢgᵢ, λ ≥ 0 complementary to ⟨v, gᵢ⟩ ≥ mᵢ‖v‖, and
    κ = 1 − λᵀm/‖v‖. For fixed ρ the conditions ⟨v, gᵢ⟩ ≥ mᵢρ are a projection (an NNLS);
    the outer problem is the scalar equation ρ = ‖v(ρ)‖, solved by a bracketed bisection/secant
    (Illinois) search. If no unit vector satisfies all constraints, the cone is {0} and u = 0.
    """
    B = Gb.shape[0]
    g00 = Gb[:, 0, 0]

    def phi(rho: Tensor, free: Tensor | None):
        lam, free, it, conv, res = _projection(Gb, eps, m, rho, free, max_iter)
        w = torch.cat([torch.ones_like(lam[:, :1]), lam], -1)
        vv = torch.einsum("bi,bij,bj->b", w, Gb, w).clamp_min(0.0)
        return vv.sqrt() - rho, lam, free, it, conv, res

    scale = torch.diagonal(Gb, dim1=-2, dim2=-1).amax(-1).sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    lo = torch.zeros(B, dtype=Gb.dtype, device=Gb.device)
    f_lo, lam, free, iters, conv, res = phi(lo, None)
    hi = torch.maximum(g00.clamp_min(0).sqrt(), scale)
    f_hi, *_ = phi(hi, free)
    for _ in range(200):  # grow the bracket until φ(hi) < 0 (or the cone is trivial)
        grow = (f_hi >= 0) & (hi < scale * 1e30)
        if not bool(grow.any()):
            break
        hi = torch.where(grow, hi * 4.0, hi)
        f_hi, *_ = phi(hi, free)
    trivial = f_hi >= 0  # no root: K = {0}
    side = torch.zeros(B, dtype=torch.long, device=Gb.device)
    rtol = 1e-14 if Gb.dtype == torch.float64 else 1e-6
    rho = lo
    f = f_lo
    for _ in range(max_outer):
        # Illinois regula falsi on [lo, hi] with φ(lo) ≥ 0 > φ(hi).
        denom = (f_lo - f_hi).clamp_min(torch.finfo(Gb.dtype).tiny)
        rho = torch.where(trivial, lo, (lo * (-f_hi) + hi * f_lo) / denom)
        rho = torch.minimum(torch.maximum(rho, lo), hi)
        f, lam, free, it, conv, res = phi(rho, free)
        iters = iters + it
        right = (f < 0) & ~trivial
        left = ~right & ~trivial
        hi, f_hi = torch.where(right, rho, hi), torch.where(right, f, f_hi)
        lo, f_lo = torch.where(left, rho, lo), torch.where(left, f, f_lo)
        f_lo = torch.where(right & (side == 1), 0.5 * f_lo, f_lo)
        f_hi = torch.where(left & (side == -1), 0.5 * f_hi, f_hi)
        side = torch.where(right, torch.ones_like(side), -torch.ones_like(side))
        done = trivial | (f.abs() <= rtol * (scale + rho)) | (hi - lo <= rtol * hi)
        if bool(done.all()):
            break
    nv = f + rho  # ‖v‖
    kappa = torch.where(nv > 0, 1.0 - (lam * m).sum(-1) / nv.clamp_min(torch.finfo(Gb.dtype).tiny), torch.zeros_like(nv))
    kappa = torch.where(trivial, torch.zeros_like(kappa), kappa.clamp_min(0.0))
    w = torch.cat([torch.ones_like(lam[:, :1]), lam], -1) * kappa.unsqueeze(-1)
    return w, iters, conv & (trivial | (f.abs() <= 1e3 * rtol * (scale + rho))), res


def primary_aux(
    G: Tensor,
    n_primary: int = 1,
    eps: float = 0.0,
    margin: float = 0.0,
    *,
    relative_margin: bool = False,
    max_iter: int | None = None,
    compute_dtype: torch.dtype | None = None,
    check_input: bool = True,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, SolverInfo]:
    """Weights of the primary/auxiliary update u = Jᵀw, batched over leading dims of G (..., k, k).

    The first ``n_primary`` tasks are primary, the rest auxiliary.

    * n_primary = 1: w₀ = 1 and w₁.. = λ ≥ 0 minimizing ½‖g0 + Σ λᵢgᵢ‖², so u is the point
      closest to g0 with ⟨u, gᵢ⟩ ≥ 0 for every auxiliary gradient (the projection of g0 onto the
      dual cone). One auxiliary uses the closed form λ = relu(−⟨g0, g1⟩)/‖g1‖².
    * n_primary > 1: w[:n] in the simplex and w[n:] ≥ 0 minimizing ‖Jᵀw‖²; u is then the
      min-norm common descent direction of the primaries that raises no auxiliary loss
      (⟨u, gⱼ⟩ ≥ ‖u‖² for primaries, ⟨u, gᵢ⟩ ≥ 0 for auxiliaries). Scale convention: as MGDA,
      the primary weights sum to 1, so ‖u‖ ≤ min over primaries of ‖gⱼ‖; n_primary = k is MGDA.

    Args:
        eps: a task with ‖gᵢ‖² ≤ eps·max_j ‖gⱼ‖² is a zero gradient: an auxiliary one gets
            weight 0 (never NaN) and its constraint is dropped. The default 0 drops exact zeros
            (and squared norms below the dtype's smallest normal number) only: the problem is solved in variables rescaled by 1/‖gᵢ‖, so a tiny but nonzero
            gradient (1e-20 beside 1e20 in float64) keeps its constraint exactly. Raise eps to
            treat gradients below a relative size as noise (e.g. 1e-12 for norm ratios < 1e-6).
        margin: with n_primary = 1, enforce the robust constraint ⟨u, gᵢ⟩ ≥ margin·‖u‖ (the
            worst case over perturbations ‖δᵢ‖ ≤ margin of each auxiliary gradient). Then
            w₀ = κ ∈ [0, 1] shrinks the step; u = 0 when no direction satisfies the margins.
        relative_margin: read ``margin`` as a cosine: ⟨u, gᵢ⟩ ≥ margin·‖u‖·‖gᵢ‖.
        max_iter: pivoting iterations at most (default 10·k + 50).
        compute_dtype: default float64 on the CPU, the input's dtype on a GPU.
        check_input: validate shape, symmetry and finiteness of G (one host synchronization).
        return_info: also return a :class:`SolverInfo` (iterations, KKT residual, converged).
    """
    k = check_gram(G, check_values=check_input)
    if not isinstance(n_primary, int) or not 1 <= n_primary <= k:
        raise ValueError(
            f"n_primary must be an int between 1 and k = {k} (the first n_primary rows of G are "
            f"the primary tasks), got {n_primary!r}."
        )
    if margin < 0 or margin != margin:
        raise ValueError(f"margin must be ≥ 0, got {margin!r}.")
    if margin > 0 and n_primary != 1:
        raise ValueError(
            "margin > 0 is defined for one primary task (n_primary = 1); with several primaries "
            "use margin = 0 or group the primaries into one loss."
        )
    if eps < 0:
        raise ValueError(f"eps must be ≥ 0, got {eps!r}.")
    work = compute_dtype or _default_compute_dtype(G)
    Gb, batch = _flatten(G, work)
    B = Gb.shape[0]
    iters_cap = max_iter if max_iter is not None else 10 * k + 50
    zeros = torch.zeros(B, dtype=torch.long, device=G.device)
    if k == 1:
        w = torch.ones(B, 1, dtype=work, device=G.device)
        info = (zeros, torch.zeros(B, dtype=work, device=G.device), torch.ones(B, dtype=torch.bool, device=G.device))
    elif n_primary > 1:
        w, iters, conv, res = _mixed(Gb, n_primary, eps, iters_cap, return_info)
        info = (iters, res, conv)
    elif margin > 0:
        diag = torch.diagonal(Gb, dim1=-2, dim2=-1)[:, 1:]
        m = margin * diag.clamp_min(0).sqrt() if relative_margin else torch.full_like(diag, margin)
        w, iters, conv, res = _margin_projection(Gb, eps, m, iters_cap, 200)
        info = (iters, res, conv)
    elif k == 2:
        w = _single_aux(Gb, eps)
        res = primary_aux_kkt_residual(w, Gb, eps=eps) if return_info else None
        info = (zeros, res, torch.ones(B, dtype=torch.bool, device=G.device))
    else:
        lam, _, iters, conv, res = _projection(Gb, eps, None, None, None, iters_cap, return_info)
        w = torch.cat([torch.ones_like(lam[:, :1]), lam], -1)
        info = (iters, res, conv)
    out = w.to(G.dtype).reshape(*batch, k)
    if return_info:
        return out, _info(*info, batch, G.dtype)
    return out


def min_norm_simplex(
    G: Tensor,
    *,
    max_iter: int | None = None,
    compute_dtype: torch.dtype | None = None,
    check_input: bool = True,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, SolverInfo]:
    """α in the probability simplex minimizing αᵀGα (MGDA's dual), batched over G (..., k, k).

    d = Jᵀα is the min-norm point of the convex hull of the gradients; ⟨d, gⱼ⟩ ≥ ‖d‖² for all j.
    """
    k = check_gram(G, check_values=check_input)
    return primary_aux(
        G,
        n_primary=k,
        max_iter=max_iter,
        compute_dtype=compute_dtype,
        check_input=False,
        return_info=return_info,
    )


def primary_aux_kkt_residual(w: Tensor, G: Tensor, n_primary: int = 1, eps: float = 0.0) -> Tensor:
    """Scale-free KKT residual of primary/aux weights w for Gram G, batched; 0 at the optimum.

    With u = Jᵀw (primary weights normalized to sum 1), σᵢ = ‖gᵢ‖ and S = ‖w‖₁·maxⱼ σⱼ (the
    data's scale of ⟨u, gᵢ⟩/σᵢ): the largest of |min(λᵢσᵢ/S, ⟨u, gᵢ⟩/(σᵢS))| over auxiliaries
    (feasibility and complementarity) and, for n_primary > 1, |min(αⱼ, (⟨u, gⱼ⟩ − ‖u‖²)/(σⱼS))|
    over primaries. Zero-gradient tasks (‖gᵢ‖² ≤ eps·max ‖g‖²) are exempt.
    """
    k = G.shape[-1]
    Gd = G.to(torch.float64) if G.device.type == "cpu" else G
    n = n_primary
    wd = w.to(Gd.dtype)
    wd = wd / wd[..., :n].sum(-1, keepdim=True).clamp_min(torch.finfo(wd.dtype).tiny)
    diag = torch.diagonal(Gd, dim1=-2, dim2=-1).clamp_min(0)
    sig = diag.sqrt()
    S = wd.abs().sum(-1, keepdim=True) * sig.amax(-1, keepdim=True)
    S = torch.where(S > 0, S, torch.ones_like(S))
    Gu = (Gd @ wd.unsqueeze(-1)).squeeze(-1)  # ⟨u, gᵢ⟩
    dead = (diag <= eps * diag.amax(-1, keepdim=True)) | (diag <= 0)
    sig_safe = torch.where(dead, torch.ones_like(sig), sig)
    aux = torch.minimum(wd * sig / S, Gu / (sig_safe * S)).abs()
    aux = torch.where(dead, torch.zeros_like(aux), aux)[..., n:]
    out = aux.amax(-1) if k > n else torch.zeros(G.shape[:-2], dtype=Gd.dtype, device=G.device)
    if n > 1:
        uu = (wd * Gu).sum(-1, keepdim=True)
        prim = torch.minimum(wd[..., :n], (Gu[..., :n] - uu) / (sig_safe[..., :n] * S)).abs()
        prim = torch.where(dead[..., :n], torch.zeros_like(prim), prim).amax(-1)
        out = torch.maximum(out, prim)
    return out.to(G.dtype)


def primary_aux_frank_wolfe(G: Tensor, iters: int = 100, eps: float = 0.0) -> Tensor:
    """Reference coordinate iteration for n_primary = 1 (slow, for tests and benchmarks).

    Each step picks τ = argminᵢ ⟨gᵢ, u⟩ and minimizes ½‖u‖² exactly over λ_τ ≥ 0:
    λ_τ ← max(0, λ_τ − ⟨g_τ, u⟩/‖g_τ‖²), with u = g0 + Σ λᵢgᵢ. Batched over G (..., k, k).
    """
    k = check_gram(G)
    if iters < 0:
        raise ValueError(f"iters must be ≥ 0, got {iters}.")
    Gb, batch = _flatten(G, _default_compute_dtype(G))
    lam = torch.zeros(Gb.shape[0], k - 1, dtype=Gb.dtype, device=G.device)
    if k > 1:
        Q = Gb[:, 1:, 1:]
        c = Gb[:, 1:, 0]
        qd = torch.diagonal(Q, dim1=-2, dim2=-1)
        dead = _zero_gradients(Gb, eps)[:, 1:]
        qd_safe = torch.where(dead, torch.ones_like(qd), qd)
        rows = torch.arange(Gb.shape[0], device=G.device)
        for _ in range(iters):
            y = (Q @ lam.unsqueeze(-1)).squeeze(-1) + c  # ⟨gᵢ, u⟩
            # the coordinate that most violates its KKT condition (a negative ⟨gᵢ, u⟩ or a
            # positive one with λᵢ > 0 that could shrink); zero gradients never move
            score = torch.where(dead, torch.zeros_like(y), torch.where(lam > 0, -y.abs(), y) / qd_safe.sqrt())
            tau = score.argmin(-1)
            step = lam[rows, tau] - y[rows, tau] / qd_safe[rows, tau]
            lam[rows, tau] = torch.where(dead[rows, tau], lam[rows, tau], step.clamp_min(0.0))
    w = torch.cat([torch.ones(Gb.shape[0], 1, dtype=Gb.dtype, device=G.device), lam], -1)
    return w.to(G.dtype).reshape(*batch, k)
