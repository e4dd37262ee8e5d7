"""The primary/auxiliary problem and MGDA's min-norm problem, solved exactly on Gram matrices.

Task gradients are the rows g_1..g_k of J and G = J Jᵀ. All functions return weights w with the
update direction u = Jᵀw, so that a single backward of Σ wᵢ Lᵢ applies it.
"""

from __future__ import annotations

from typing import Literal, overload

import torch
from torch import Tensor

from ._checks import check_gram, check_max_iter, check_nonneg, compute_dtype_for
from .nnls import (
    SolverInfo,
    _default_compute_dtype,
    _pivot,
    _rescale,
    _scaled_residual,
    _tolerances,
    _unbounded,
    certificate_tolerance,
)

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
    the smallest normal number of the dtype (a subnormal ‖g‖² has too few bits to give a direction).
    """
    diag = torch.diagonal(Gb, dim1=-2, dim2=-1)
    dmax = diag.amax(-1, keepdim=True)
    return (diag <= eps * dmax) | (diag < torch.finfo(Gb.dtype).tiny)


# KKT residual (on G) above which the pivoting answer of the mixed problem is recomputed exactly
_EXACT_FALLBACK = 1e-9


def _polish_all(Gb: Tensor) -> bool:
    """Whether every mixed/min-norm answer is polished by the exact active set (on the CPU)."""
    return Gb.device.type == "cpu"


def _info(
    iters: Tensor, res: Tensor, conv: Tensor, batch: torch.Size, dtype: torch.dtype
) -> SolverInfo:
    return SolverInfo(iters.reshape(batch), res.to(dtype).reshape(batch), conv.reshape(batch))


def _single_aux(Gb: Tensor, eps: float) -> Tensor:
    """Closed form for one auxiliary: λ = relu(−⟨g0, g1⟩)/‖g1‖², and 0 for a zero g1."""
    g01 = Gb[:, 0, 1]
    g11 = Gb[:, 1, 1]
    dead = _zero_gradients(Gb, eps)[:, 1]
    lam = torch.where(
        dead, torch.zeros_like(g11), torch.relu(-g01) / torch.where(dead, torch.ones_like(g11), g11)
    )
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
        assert rho is not None  # the margin problem comes with its ρ
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
    """Min ‖Σ_{j<n} αⱼgⱼ + Σ_{i≥n} λᵢgᵢ‖² over α in the simplex and λ ≥ 0.

    Reduced to a non-negative least-distance problem (Lawson & Hanson, ch. 23): with
    b = (1ₙ, 0), y ≥ 0 minimizing ½ yᵀ(G/s + bbᵀ)y − bᵀy gives w = y / Σ_{j<n} yⱼ for any s > 0.
    It is solved in the variables zᵢ = yᵢ·σᵢ/σ_min (σᵢ = ‖gᵢ‖, σ_min the smallest nonzero
    primary norm, s = σ_min²): the matrix is C + b̃b̃ᵀ with C the Gram of the normalized
    gradients (unit diagonal) and b̃ⱼ = σ_min/σⱼ ≤ 1 on primaries. Every entry then has the
    rounding of the normalized Gram itself whatever the spread of the norms (1e-20 to 1e20 in
    float64): adding bbᵀ to G/s with s = max σ² instead would round a small task's curvature
    away. Zero primary gradients (‖gⱼ‖² below the dtype's smallest normal) make d = 0 optimal:
    their weights are uniform and the rest 0. The exact active set then polishes the answer
    (see below). Returns (w, iters, conv, None).
    """
    k = Gb.shape[-1]
    tiny = torch.finfo(Gb.dtype).tiny
    diag = torch.diagonal(Gb, dim1=-2, dim2=-1)
    dead = _zero_gradients(Gb, eps)
    zero_prim = (diag[:, :n] < tiny) | (diag[:, :n] <= 0)
    dead[:, :n] = zero_prim
    sig = torch.where(dead, torch.ones_like(diag), diag.clamp_min(tiny).sqrt())
    inv = torch.where(dead, torch.zeros_like(sig), 1.0 / sig)
    C = Gb * inv.unsqueeze(-1) * inv.unsqueeze(-2)
    sig_min = torch.where(dead[:, :n], torch.full_like(sig[:, :n], float("inf")), sig[:, :n]).amin(
        -1, keepdim=True
    )
    sig_min = torch.where(torch.isfinite(sig_min), sig_min, torch.ones_like(sig_min))
    bt = torch.zeros_like(sig)
    bt[:, :n] = torch.where(dead[:, :n], torch.zeros_like(sig[:, :n]), sig_min / sig[:, :n])
    Q = C + bt.unsqueeze(-1) * bt.unsqueeze(-2)
    Qs, cs, d, gamma, zero = _rescale(Q, -bt, 0.0)
    zero = zero | dead
    tol, ridge = _tolerances(Gb.dtype)
    xs, _, iters, conv = _pivot(Qs, cs, zero, tol, ridge, max_iter)
    z = xs * d * gamma
    y = z * torch.where(dead, torch.zeros_like(sig), sig_min / sig)  # yᵢ = zᵢ·σ_min/σᵢ
    w = y / y[:, :n].sum(-1, keepdim=True).clamp_min(tiny)
    any_zero = zero_prim.any(-1, keepdim=True)
    if bool(any_zero.any()):
        uniform = torch.zeros_like(w)
        uniform[:, :n] = zero_prim.to(w.dtype) / zero_prim.sum(-1, keepdim=True).clamp_min(1).to(
            w.dtype
        )
        w = torch.where(any_zero, uniform, w)
        conv = conv | any_zero.squeeze(-1)
    # The pivoting ridge is relative to the normalized Gram: a support whose large gradients
    # cancel (d far below their norms) beside a much smaller task is beyond it. On the CPU the
    # exact active set polishes every answer from its support (a few factorizations); on other
    # devices only the answers whose KKT residual on G exceeds _EXACT_FALLBACK (float64) or a
    # tenth of the certificate tolerance (float32, whose correct answers sit near 1e-6) go to
    # the host.
    res = primary_aux_kkt_residual(w, Gb, n, eps)
    limit = (
        _EXACT_FALLBACK if Gb.dtype == torch.float64 else 0.1 * certificate_tolerance(Gb.dtype, k)
    )
    redo = (res > limit) | ~conv
    if _polish_all(Gb):
        redo = torch.ones_like(conv)
    if bool(redo.any()):
        idx = redo.nonzero().squeeze(1)
        from . import _compiled

        Gh = Gb[idx].detach().to("cpu", torch.float64).contiguous().numpy()
        W, it_x, ok = _compiled.mixed_exact(
            Gh, n, dead[idx].cpu().numpy(), (w[idx] > 0).cpu().numpy(), max(max_iter, 4 * k + 20)
        )
        wx = torch.from_numpy(W).to(w)
        better = primary_aux_kkt_residual(wx, Gb[idx], n, eps) <= res[idx]
        w = w.index_copy(0, idx, torch.where(better.unsqueeze(-1), wx, w[idx]))
        conv = conv.index_copy(
            0, idx, torch.where(better, torch.from_numpy(ok).to(conv.device), conv[idx])
        )
        iters = iters.index_copy(0, idx, iters[idx] + torch.from_numpy(it_x).to(iters.device))
    return w, iters, conv, None


def _margin_projection(
    Gb: Tensor, eps: float, m: Tensor, max_iter: int, max_outer: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Closest u to g0 with ⟨u, gᵢ⟩ ≥ mᵢ‖u‖ (a second-order cone constraint per auxiliary).

    KKT: u = κ·v with v = g0 + Σ λᵢgᵢ, λ ≥ 0 complementary to ⟨v, gᵢ⟩ ≥ mᵢ‖v‖, and
    κ = 1 − λᵀm/‖v‖. For fixed ρ the conditions ⟨v, gᵢ⟩ ≥ mᵢρ are a projection (an NNLS);
    the outer problem is the scalar equation ρ = ‖v(ρ)‖, solved by a bracketed bisection/secant
    (Illinois) search. If no unit vector satisfies all constraints, the cone is {0} and u = 0.
    Returns (w, iterations, converged, trivial, λ at the last ρ).
    """
    B = Gb.shape[0]
    g00 = Gb[:, 0, 0]
    # A direction λ ≥ 0 with Σλᵢgᵢ = 0 and λᵀm > 0 proves the cone is {0} (0 = ⟨u, Σλᵢgᵢ⟩ ≥
    # λᵀm·‖u‖); it is the unbounded direction of the projection for every ρ > 0, found once.
    Qs, cs, _, _, zero = _rescale(Gb[:, 1:, 1:], -m, 0.0)
    tol, ridge = _tolerances(Gb.dtype)
    xs, *_ = _pivot(Qs, cs, zero | _zero_gradients(Gb, eps)[:, 1:], tol, ridge, max_iter)
    certified_trivial = _unbounded(Qs, cs, xs, ridge)

    def phi(
        rho: Tensor, free: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        lam, free, it, conv, res = _projection(Gb, eps, m, rho, free, max_iter)
        w = torch.cat([torch.ones_like(lam[:, :1]), lam], -1)
        vv = torch.einsum("bi,bij,bj->b", w, Gb, w).clamp_min(0.0)
        return vv.sqrt() - rho, lam, free, it, conv, res

    scale = torch.diagonal(Gb, dim1=-2, dim2=-1).amax(-1).sqrt()
    s0 = g00.clamp_min(0).sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    lo = torch.zeros(B, dtype=Gb.dtype, device=Gb.device)
    f_lo, lam, free, iters, conv, res = phi(lo, None)
    hi = torch.maximum(g00.clamp_min(0).sqrt(), scale)
    f_hi, *_ = phi(hi, free)
    for _ in range(200):  # grow the bracket until φ(hi) < 0 (or the cone is trivial)
        grow = (f_hi >= 0) & ~certified_trivial & (hi < scale * 1e30)
        if not bool(grow.any()):
            break
        hi = torch.where(grow, hi * 4.0, hi)
        f_hi, *_ = phi(hi, free)
    trivial = (f_hi >= 0) | certified_trivial  # no root: K = {0}
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
        # ρ = ‖v‖ to a relative tolerance of v's own scale (the primary's norm and ρ), never of
        # the largest auxiliary's norm, which may be 1e16 times larger
        done = trivial | (f.abs() <= rtol * (s0 + rho)) | (hi - lo <= rtol * hi)
        if bool(done.all()):
            break
    nv = f + rho  # ‖v‖
    kappa = torch.where(
        nv > 0,
        1.0 - (lam * m).sum(-1) / nv.clamp_min(torch.finfo(Gb.dtype).tiny),
        torch.zeros_like(nv),
    )
    # κ ≤ 0: the zero step is the answer, certified by ‖v‖ ≤ λᵀm (checked by the caller's
    # residual) whether or not the root search met its own tolerance
    zero_step = trivial | (kappa <= 0)
    kappa = torch.where(trivial, torch.zeros_like(kappa), kappa.clamp_min(0.0))
    w = torch.cat([torch.ones_like(lam[:, :1]), lam], -1) * kappa.unsqueeze(-1)
    ok = conv & (f.abs() <= 1e3 * rtol * (s0 + rho))
    return w, iters, zero_step | ok, trivial, lam


@overload
def primary_aux(
    G: Tensor,
    n_primary: int = ...,
    eps: float = ...,
    margin: float = ...,
    *,
    relative_margin: bool = ...,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: Literal[False] = ...,
) -> Tensor: ...


@overload
def primary_aux(
    G: Tensor,
    n_primary: int = ...,
    eps: float = ...,
    margin: float = ...,
    *,
    relative_margin: bool = ...,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: Literal[True],
) -> tuple[Tensor, SolverInfo]: ...


@overload
def primary_aux(
    G: Tensor,
    n_primary: int = ...,
    eps: float = ...,
    margin: float = ...,
    *,
    relative_margin: bool = ...,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: bool = ...,
) -> Tensor | tuple[Tensor, SolverInfo]: ...


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
        G: (..., k, k) Gram matrices J Jᵀ of the task gradients (symmetric PSD).
        n_primary: the first ``n_primary`` tasks are primary (1 ≤ n_primary ≤ k).
        eps: a task with ‖gᵢ‖² ≤ eps·max_j ‖gⱼ‖² is a zero gradient: an auxiliary one gets
            weight 0 (never NaN) and its constraint is dropped. The default 0 drops exact zeros
            (and squared norms below the dtype's smallest normal number) only: the problem is
            solved in variables rescaled by 1/‖gᵢ‖, so a tiny but nonzero gradient (1e-20
            beside 1e20 in float64) keeps its constraint exactly. Raise eps to
            treat gradients below a relative size as noise (e.g. 1e-12 for norm ratios < 1e-6).
        margin: with n_primary = 1, enforce the robust constraint ⟨u, gᵢ⟩ ≥ margin·‖u‖ (the
            worst case over perturbations ‖δᵢ‖ ≤ margin of each auxiliary gradient). Then
            w₀ = κ ∈ [0, 1] shrinks the step; u = 0 when no direction satisfies the margins.
        relative_margin: read ``margin`` as a cosine: ⟨u, gᵢ⟩ ≥ margin·‖u‖·‖gᵢ‖.
        max_iter: pivoting iterations at most (default 10·k + 50).
        compute_dtype: default float64 on the CPU, the input's dtype on a GPU; float16 and
            bfloat16 are computed in float32 (the weights come back in G's dtype).
        check_input: validate shape, symmetry and finiteness of G (one host synchronization).
        return_info: also return a :class:`SolverInfo`: iterations, the KKT residual of the
            returned weights on the G given (:func:`primary_aux_kkt_residual`, each constraint
            in its own units; for margin > 0 the residual of the second-order-cone KKT
            conditions, and for a zero step its certificate), and converged = the solver
            finished and that residual is at most :func:`certificate_tolerance`.

    Mixed scales: n_primary = 1 is solved in variables normalized by ‖gᵢ‖; n_primary > 1 in
    normalized variables too (see ``_mixed``), with the exact active set of
    :mod:`taskgrad.solvers._compiled` polishing the pivoting answer on the CPU (elsewhere it
    replaces answers whose residual exceeds 1e-9), so task norms from 1e-20 to 1e20 (float64)
    give the right weights.

    Raises:
        ValueError / TypeError: a malformed G, n_primary outside 1..k, or eps, margin
            (finite ≥ 0) and max_iter (int ≥ 1) out of range or of the wrong type.
    """
    k = check_gram(G, check_values=check_input)
    if isinstance(n_primary, bool) or not isinstance(n_primary, int) or not 1 <= n_primary <= k:
        raise ValueError(
            f"n_primary must be an int between 1 and k = {k} (the first n_primary rows of G are "
            f"the primary tasks), got {n_primary!r}."
        )
    margin = check_nonneg("margin", margin)
    eps = check_nonneg("eps", eps)
    max_iter = check_max_iter(max_iter)
    if margin > 0 and n_primary != 1:
        raise ValueError(
            "margin > 0 is defined for one primary task (n_primary = 1); with several primaries "
            "use margin = 0 or group the primaries into one loss."
        )
    work = compute_dtype_for(G, compute_dtype)
    Gb, batch = _flatten(G, work)
    B = Gb.shape[0]
    out_dtype = G.dtype
    if B == 0:
        out = torch.zeros(*batch, k, dtype=out_dtype, device=G.device)
        if return_info:
            z = torch.zeros(batch, dtype=torch.long, device=G.device)
            return out, SolverInfo(
                z, z.to(out_dtype), torch.ones(batch, dtype=torch.bool, device=G.device)
            )
        return out
    iters_cap = max_iter if max_iter is not None else 10 * k + 50
    zeros = torch.zeros(B, dtype=torch.long, device=G.device)
    ones = torch.ones(B, dtype=torch.bool, device=G.device)
    trivial = None
    if k == 1:
        w = torch.ones(B, 1, dtype=work, device=G.device)
        iters, conv = zeros, ones
    elif n_primary > 1:
        w, iters, conv, _ = _mixed(Gb, n_primary, eps, iters_cap, False)
    elif margin > 0:
        diag = torch.diagonal(Gb, dim1=-2, dim2=-1)[:, 1:]
        m = margin * diag.clamp_min(0).sqrt() if relative_margin else torch.full_like(diag, margin)
        w, iters, conv, trivial, lam = _margin_projection(Gb, eps, m, iters_cap, 200)
    elif k == 2:
        w = _single_aux(Gb, eps)
        iters, conv = zeros, ones
    else:
        lam, _, iters, conv, _ = _projection(Gb, eps, None, None, None, iters_cap, False)
        w = torch.cat([torch.ones_like(lam[:, :1]), lam], -1)
    out = w.to(out_dtype)
    if return_info:
        # the certificate of the answer returned, on the user's G (not the rescaled problem)
        wr = out.to(work)
        if margin > 0 and k > 1:
            res = _margin_kkt_residual(wr, Gb, m, eps, lam)
            assert trivial is not None  # margin > 0 (one primary): the margin branch ran
            res = torch.where(trivial, torch.zeros_like(res), res)
        else:
            res = primary_aux_kkt_residual(wr, Gb, n_primary, eps)
        conv = conv & (res <= certificate_tolerance(out_dtype, k))
        return out.reshape(*batch, k), _info(iters, res, conv, batch, out_dtype)
    return out.reshape(*batch, k)


@overload
def min_norm_simplex(
    G: Tensor,
    *,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: Literal[False] = ...,
) -> Tensor: ...


@overload
def min_norm_simplex(
    G: Tensor,
    *,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: Literal[True],
) -> tuple[Tensor, SolverInfo]: ...


@overload
def min_norm_simplex(
    G: Tensor,
    *,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: bool = ...,
) -> Tensor | tuple[Tensor, SolverInfo]: ...


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

    With u = Jᵀw (primary weights normalized to sum 1), σᵢ = ‖gᵢ‖, vᵢ = |wᵢ|σᵢ (the weight of
    the normalized gradient gᵢ/σᵢ) and V = Σᵢ vᵢ: the largest over auxiliaries of
    |min(vᵢ/V, ⟨u, gᵢ⟩/(σᵢV))| (feasibility and complementarity of ⟨u, gᵢ⟩ ≥ 0) and, for
    n_primary > 1, over primaries of |min(vⱼ/V, (⟨u, gⱼ⟩ − ‖u‖²)/((σⱼ + V)·V))|.

    Each constraint is measured relative to its own scale, the bound on the rounding of its
    terms when computed from G: |⟨u, gᵢ⟩| ≤ σᵢV and ‖u‖² ≤ V². A correct answer thus gives
    O(k·eps) and a constraint violated by a fraction of its scale O(1), whatever the spread of
    the task norms: rescaling a task's gradient by s (and its weight by 1/s) leaves the residual
    unchanged, where one normalized by the largest norm alone (max σ·‖w‖₁) hides the violation
    of a task 1e8 times smaller. (When large gradients cancel, ‖u‖ ≪ V, G determines u only to
    about √eps·V: that is the resolution of any answer computed from a Gram matrix.)
    Zero gradients are exactly zero here, as in the solvers (their rows of G are dropped and
    their constraints exempt): auxiliaries with ‖gᵢ‖² ≤ eps·max ‖g‖², and any task whose ‖gᵢ‖²
    is below the dtype's smallest normal number.
    """
    k = G.shape[-1]
    if G.shape[:-2].numel() == 0:
        return torch.zeros(G.shape[:-2], dtype=G.dtype, device=G.device)
    Gd = G.to(compute_dtype_for(G, None))
    n = n_primary
    wd = w.to(Gd.dtype)
    wd = wd / wd[..., :n].sum(-1, keepdim=True).clamp_min(torch.finfo(wd.dtype).tiny)
    diag = torch.diagonal(Gd, dim1=-2, dim2=-1).clamp_min(0)
    # zero gradients, as the solvers treat them: exactly zero (rows and columns of G dropped)
    dead = (diag <= eps * diag.amax(-1, keepdim=True)) | (diag < torch.finfo(Gd.dtype).tiny)
    # primaries: zero only below the smallest normal, and never the single primary of the
    # projection (u = g0 + Σλᵢgᵢ uses ⟨g0, gᵢ⟩ as given, however small g0 is)
    dead[..., :n] = (diag[..., :n] < torch.finfo(Gd.dtype).tiny) & (n > 1)
    if bool(dead.any()):
        keep = (~dead).to(Gd.dtype)
        Gd = Gd * keep.unsqueeze(-1) * keep.unsqueeze(-2)
        diag = diag * keep
    sig = diag.sqrt()
    V = (wd.abs() * sig).sum(-1, keepdim=True)
    V = torch.where(V > 0, V, torch.ones_like(V))
    Gu = (Gd @ wd.unsqueeze(-1)).squeeze(-1)  # ⟨u, gᵢ⟩
    sig_safe = torch.where(dead, torch.ones_like(sig), sig)
    # divided one factor at a time: sig·V can underflow to 0 where each factor is positive
    aux = torch.minimum(wd * sig / V, Gu / V / sig_safe).abs()
    aux = torch.where(dead, torch.zeros_like(aux), aux)[..., n:]
    out = aux.amax(-1) if k > n else torch.zeros(G.shape[:-2], dtype=Gd.dtype, device=G.device)
    if n > 1:
        uu = (wd * Gu).sum(-1, keepdim=True)
        prim = torch.minimum(
            wd[..., :n] * sig[..., :n] / V, (Gu[..., :n] - uu) / V / (sig_safe[..., :n] + V)
        ).abs()
        prim = torch.where(dead[..., :n], torch.zeros_like(prim), prim).amax(-1)
        out = torch.maximum(out, prim)
    return out.to(G.dtype)


def _margin_kkt_residual(w: Tensor, Gb: Tensor, m: Tensor, eps: float, lam: Tensor) -> Tensor:
    """KKT residual of the margin problem's answer w = κ·(1, μ) on (B, k, k) Grams.

    The Lagrangian ½‖u − g0‖² − Σ μᵢ(⟨u, gᵢ⟩ − mᵢ‖u‖) gives u = κv with v = g0 + Σ μᵢgᵢ and
    κ = 1 − μᵀm/‖v‖. With V = σ₀ + Σ μᵢσᵢ (the scale of v), for a step u ≠ 0: the largest of
    |min(μᵢσᵢ/V, (⟨v, gᵢ⟩ − mᵢ‖v‖)/(σᵢV))| over auxiliaries and |κ + μᵀm/‖v‖ − 1|. For the
    zero step u = 0 (κ = 0) the subgradient condition is ‖v‖ ≤ μᵀm for the solver's
    multipliers μ = ``lam``: the residual is relu(‖v‖ − μᵀm)/V. (A cone certified trivial,
    {0}, has residual 0; the caller applies it.)
    """
    tiny = torch.finfo(w.dtype).tiny
    kappa = w[:, 0]
    step = kappa > 0
    mu = torch.where(
        step.unsqueeze(-1), w[:, 1:] / kappa.clamp_min(tiny).unsqueeze(-1), lam.to(w.dtype)
    )
    wv = torch.cat([torch.ones_like(kappa).unsqueeze(-1), mu], -1)
    sig = torch.diagonal(Gb, dim1=-2, dim2=-1).clamp_min(0).sqrt()
    V = (wv * sig).sum(-1)
    V = torch.where(V > 0, V, torch.ones_like(V))
    Gv = (Gb @ wv.unsqueeze(-1)).squeeze(-1)
    nv = (wv * Gv).sum(-1).clamp_min(0).sqrt()
    dead = _zero_gradients(Gb, eps)[:, 1:]
    sig_a = torch.where(dead, torch.ones_like(sig[:, 1:]), sig[:, 1:])
    r = torch.minimum(
        mu * sig[:, 1:] / V[:, None], (Gv[:, 1:] - m * nv[:, None]) / (sig_a * V[:, None])
    ).abs()
    r = torch.where(dead, torch.zeros_like(r), r).amax(-1)
    mm = (mu * m).sum(-1)
    stat = (kappa + mm / nv.clamp_min(tiny) - 1).abs()
    zero_step = torch.relu(nv - mm) / V
    return torch.where(step, torch.maximum(r, stat), zero_step)


def primary_aux_frank_wolfe(G: Tensor, iters: int = 100, eps: float = 0.0) -> Tensor:
    """Reference coordinate iteration for n_primary = 1 (slow, for tests and benchmarks).

    Each step picks τ = argminᵢ ⟨gᵢ, u⟩ and minimizes ½‖u‖² exactly over λ_τ ≥ 0:
    λ_τ ← max(0, λ_τ − ⟨g_τ, u⟩/‖g_τ‖²), with u = g0 + Σ λᵢgᵢ. Batched over G (..., k, k).
    """
    k = check_gram(G)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int ≥ 0, got {iters!r}.")
    eps = check_nonneg("eps", eps)
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
            score = torch.where(
                dead, torch.zeros_like(y), torch.where(lam > 0, -y.abs(), y) / qd_safe.sqrt()
            )
            tau = score.argmin(-1)
            step = lam[rows, tau] - y[rows, tau] / qd_safe[rows, tau]
            lam[rows, tau] = torch.where(dead[rows, tau], lam[rows, tau], step.clamp_min(0.0))
    w = torch.cat([torch.ones(Gb.shape[0], 1, dtype=Gb.dtype, device=G.device), lam], -1)
    return w.to(G.dtype).reshape(*batch, k)
