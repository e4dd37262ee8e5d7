"""CAGrad: best worst-task improvement within a ball around the mean gradient (exact).

Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ...solvers import min_norm_simplex
from .. import _impl
from .._common import (
    flat_gram,
)
from .._dual_cone import dual_cone_weights
from .._impl import Impl
from .._validate import check_choice, check_int, check_real
from ..base import Weighting
from ..errors import MethodConvergenceError
from ..registry import register_method

__all__ = ["CAGrad", "cagrad_weights"]


@register_method(
    "cagrad",
    description=(
        "CAGrad: best worst-task improvement within a ball around the mean gradient (exact)."
    ),
    paper="Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning, NeurIPS 2021",
    aliases=("CAGrad",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class CAGrad(Weighting):
    """Conflict-Averse Gradient descent (Liu et al., 2021), inner problem solved exactly.

    With g₀ = (1/k)Σgᵢ and r = c‖g₀‖, CAGrad solves min over the simplex of
    F(w) = ⟨g_w, g₀⟩ + r‖g_w‖ (g_w = Jᵀw) and steps d = g₀ + r·g_w/‖g_w‖.

    Exact solution. At an optimum with s = ‖g_w‖ > 0 the KKT conditions of F, multiplied by
    s/r, are those of min over the simplex of ½‖g_w‖² + ρ⟨g_w, g₀⟩ with ρ = s/r, i.e. of the
    min-norm point of the convex hull of the shifted gradients gᵢ + ρg₀, whose Gram matrix is
    G + ρ(b1ᵀ + 1bᵀ) + ρ²‖g₀‖²11ᵀ (b = G1/k). So w = w(ρ*) where ρ* solves the scalar equation
    ‖g_w(ρ)‖ = rρ; each w(ρ) is an exact batched :func:`~taskgrad.solvers.min_norm_simplex`.
    The root is bracketed in [0, 2 max‖gᵢ‖/r] and found by safeguarded steps that are exact on
    each active set (there w(ρ) is affine in ρ and ‖g_w(ρ)‖² = r²ρ² is a quadratic), with
    regula falsi as the fallback. The weights are 1/k + w/ρ* (since r/s = 1/ρ*).

    Where 0 lies in the convex hull of the gradients (two opposite gradients, a zero gradient)
    the dual optimum can have g_w = 0 and the formula above breaks down; the weights are then
    those of CAGrad's primal solution, a d with ‖d − g₀‖ ≤ r maximizing minᵢ⟨gᵢ, d⟩: the
    projection of g₀ onto the dual cone of the gradients when it lies in the ball (worst-task
    value 0, the best possible there), else the root search from a point below ρ* (value < 0).
    A gradient far smaller than the others (down to ~1e-7 of the largest) goes through the
    regular search, exactly.

    ``rescale``: 0 keeps d (the paper's Algorithm 1, TorchJD), 1 divides by 1 + c², 2 by 1 + c
    (the options of the official code). ``norm_eps`` > 0 reproduces TorchJD's shortcut: weights
    0 when the min-norm point of the hull is ≤ ``norm_eps``·√tr G (default 0: always the exact
    solution, which is never d = 0 while g₀ ≠ 0 and c < 1). Raises
    :class:`~taskgrad.methods.MethodConvergenceError` if the root search needs more than
    ``max_iter`` steps.

    ``impl`` (see the module doc): ``"numba"`` runs the same search compiled, with each
    min-norm solve by the compiled port of the solvers' pivoting and the affine-path roots
    from a Cholesky solve of the active block (the torch path uses a pseudo-inverse of the KKT
    matrix); both stop on the same test, so they agree to rounding.
    """

    def __init__(
        self,
        c: float = 0.4,
        rescale: Literal[0, 1, 2] = 0,
        norm_eps: float = 0.0,
        max_iter: int = 100,
        impl: Impl = "auto",
    ) -> None:
        self.c = check_real("CAGrad", "c", c, low=0.0)
        self.rescale = check_choice("CAGrad", "rescale", rescale, (0, 1, 2))
        self.norm_eps = check_real("CAGrad", "norm_eps", norm_eps, low=0.0)
        self.max_iter = check_int("CAGrad", "max_iter", max_iter, low=1)
        self.impl = _impl.check_impl(impl)

    def compute(self, *, gram: Tensor) -> Tensor:
        scale = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        if _impl.use_host(self.impl, gram):
            k = gram.shape[-1]
            K = _impl.kernel("cagrad")
            wn, status = K.cagrad(
                _impl.host_gram(gram),
                float(self.c),
                float(self.norm_eps),
                int(self.max_iter),
                10 * k + 50,
                DEGENERATE_TOL,
            )
            _impl.raise_not_pd(status)
            if bool((status == K.NOT_CONVERGED).any()):
                _raise_not_converged(self.max_iter)
            deg = status == K.DEGENERATE
            if deg.any():  # 0 in the hull: the torch path's exact treatment, on the host
                Gd = torch.from_numpy(_impl.host_gram(gram)[deg])
                wd, ok = _degenerate(Gd, float(self.c), int(self.max_iter))
                if not bool(ok.all()):
                    _raise_not_converged(self.max_iter)
                wn[deg] = wd.numpy()
            return _impl.from_host(wn / scale, gram.shape[:-1], gram)
        Gb, batch = flat_gram(gram)
        w = cagrad_weights(Gb, self.c, self.norm_eps, self.max_iter) / scale
        return w.to(gram.dtype).reshape(*batch, Gb.shape[-1])


def _shifted_gram(Gb: Tensor, b: Tensor, g0sq: Tensor, rho: Tensor) -> Tensor:
    r = rho[:, None, None]
    return Gb + r * (b.unsqueeze(-1) + b.unsqueeze(-2)) + (r * r) * g0sq[:, None, None]


def _quad(w: Tensor, Gb: Tensor) -> Tensor:
    return torch.einsum("bi,bij,bj->b", w, Gb, w).clamp_min(0.0)


def _affine_path_roots(Gb: Tensor, b: Tensor, w: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """On the active set of w, w(ρ) = a + ρc solves the equality-constrained QP; return the two
    positive roots of ‖Jᵀw(ρ)‖² = r²ρ² (NaN where there is none).
    """
    B, k = w.shape
    f = (w > 0).to(Gb.dtype)
    ff = f.unsqueeze(-1) * f.unsqueeze(-2)
    scale = torch.diagonal(Gb, dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(Gb.dtype).tiny)
    M = torch.zeros(B, k + 1, k + 1, dtype=Gb.dtype, device=Gb.device)
    M[:, :k, :k] = Gb / scale[:, None, None] * ff + torch.diag_embed(1.0 - f)
    M[:, :k, k] = f
    M[:, k, :k] = f
    rhs = torch.zeros(B, k + 1, 2, dtype=Gb.dtype, device=Gb.device)
    rhs[:, k, 0] = 1.0
    rhs[:, :k, 1] = -b * f / scale[:, None]
    sol = torch.linalg.pinv(M, hermitian=True) @ rhs
    a, c = sol[:, :k, 0] * f, sol[:, :k, 1] * f
    A2 = torch.einsum("bi,bij,bj->b", c, Gb, c) - r * r
    A1 = torch.einsum("bi,bij,bj->b", a, Gb, c)
    A0 = torch.einsum("bi,bij,bj->b", a, Gb, a)
    disc = A1 * A1 - A2 * A0
    sq = disc.clamp_min(0.0).sqrt()
    # roots of A2 ρ² + 2 A1 ρ + A0 = 0, written stably
    q = -(A1 + torch.where(A1 >= 0, sq, -sq))
    nan = torch.full_like(q, float("nan"))
    out = []
    for root in (q / A2, A0 / q):
        out.append(torch.where((root > 0) & torch.isfinite(root) & (disc >= 0), root, nan))
    return out[0], out[1]


# ‖g_w‖ at the min-norm point of the hull below DEGENERATE_TOL·maxᵢ‖gᵢ‖ counts as 0 in the hull: the
# min-norm solve resolves wᵀGw to ~ε·max G, so ‖g_w‖ only to ~√ε·maxᵢ‖gᵢ‖ (1.5e-8 in float64,
# 3.5e-4 in float32, the working dtype of a float32 Gram on a GPU)
DEGENERATE_TOL = 1e-7


def degenerate_tol(dtype: torch.dtype) -> float:
    """DEGENERATE_TOL in float64, scaled by √ε in lower precisions."""
    return DEGENERATE_TOL * (torch.finfo(dtype).eps / torch.finfo(torch.float64).eps) ** 0.5


def _search(
    Gb: Tensor,
    b: Tensor,
    g0sq: Tensor,
    r: Tensor,
    lo: Tensor,
    f_lo: Tensor,
    w_lo: Tensor,
    max_iter: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The root ρ* of f(ρ) = ‖g_w(ρ)‖ − rρ in (lo, hi] (f(lo) = f_lo > 0 at w(lo) = w_lo,
    hi = 2 maxᵢ‖gᵢ‖/r where f < 0): returns (w(ρ*), ρ*, converged).
    """
    B = Gb.shape[0]
    smax = torch.diagonal(Gb, dim1=-2, dim2=-1).amax(-1).clamp_min(0).sqrt()
    hi = 2.0 * smax / r
    w_hi = min_norm_simplex(_shifted_gram(Gb, b, g0sq, hi), check_input=False)
    f_hi = _quad(w_hi, Gb).sqrt() - r * hi
    rho, w, f = hi, w_hi, f_hi
    tol = 64 * torch.finfo(Gb.dtype).eps
    done = torch.zeros(B, dtype=torch.bool, device=Gb.device)
    side = torch.zeros(B, dtype=torch.long, device=Gb.device)
    cand_src = w_lo
    for _ in range(max_iter):
        c1, c2 = _affine_path_roots(Gb, b, cand_src, r)
        in1 = (c1 > lo) & (c1 < hi)
        in2 = (c2 > lo) & (c2 < hi)
        cand = torch.where(in1, c1, c2)
        use = in1 | in2
        falsi = (lo * (-f_hi) + hi * f_lo) / (f_lo - f_hi).clamp_min(torch.finfo(Gb.dtype).tiny)
        new = torch.where(use, cand, falsi)
        new = torch.where(done, rho, new)
        w_new = min_norm_simplex(_shifted_gram(Gb, b, g0sq, new), check_input=False)
        f_new = _quad(w_new, Gb).sqrt() - r * new
        rho = torch.where(done, rho, new)
        w = torch.where(done.unsqueeze(-1), w, w_new)
        f = torch.where(done, f, f_new)
        right = (f < 0) & ~done
        left = (f >= 0) & ~done
        hi, f_hi = torch.where(right, rho, hi), torch.where(right, f, f_hi)
        lo, f_lo = torch.where(left, rho, lo), torch.where(left, f, f_lo)
        # Illinois: halve the stale end's value when the same side moves twice
        f_lo = torch.where(right & (side == 1) & ~use, 0.5 * f_lo, f_lo)
        f_hi = torch.where(left & (side == -1) & ~use, 0.5 * f_hi, f_hi)
        side = torch.where(
            right, torch.ones_like(side), torch.where(left, -torch.ones_like(side), side)
        )
        cand_src = w
        done = done | (f.abs() <= 1e-12 * r * rho + tol * smax) | (hi - lo <= tol * hi)
        if bool(done.all()):
            break
    return w, rho, done


def _degenerate(Gb: Tensor, c: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """CAGrad's primal solution where 0 lies in the convex hull of the gradients (B, k, k).

    Then no d improves every task, and the best worst-task value is ≤ 0. If the projection d of
    g₀ onto the dual cone {x : ⟨gᵢ, x⟩ ≥ 0 ∀i} lies in the ball ‖d − g₀‖ ≤ r, it attains 0 and is
    a solution (weights v ≥ 1/k from the dual-cone NNLS). Otherwise the value is < 0, the dual
    optimum has g_w ≠ 0 and ρ* > 0: a point with f(ρ) > 0 below ρ* is found by halving ρ from
    the top of the bracket, and the search runs from there. Returns (weights, converged).
    """
    B, k = Gb.shape[0], Gb.shape[-1]
    p = torch.full((k,), 1.0 / k, dtype=Gb.dtype, device=Gb.device)
    v = dual_cone_weights(Gb, p.unsqueeze(0), "torch")[:, 0, :]
    b = Gb.sum(-1) / k
    g0sq = (b.sum(-1) / k).clamp_min(0.0)
    r = c * g0sq.sqrt()
    u = v - p
    dist = _quad(u, Gb).sqrt()
    inside = dist <= r * (1.0 + 1e-9)
    out = v.clone()
    ok = torch.ones(B, dtype=torch.bool, device=Gb.device)
    if bool(inside.all()):
        return out, ok
    idx = (~inside).nonzero().squeeze(-1)
    Go, bo, g0o, ro = Gb[idx], b[idx], g0sq[idx], r[idx]
    smax = torch.diagonal(Go, dim1=-2, dim2=-1).amax(-1).clamp_min(0).sqrt()
    rho = 2.0 * smax / ro
    lo = torch.zeros_like(rho)
    f_lo = torch.zeros_like(rho)
    w_lo = torch.zeros(len(idx), k, dtype=Gb.dtype, device=Gb.device)
    found = torch.zeros(len(idx), dtype=torch.bool, device=Gb.device)
    for _ in range(60):
        rho = 0.5 * rho
        w = min_norm_simplex(_shifted_gram(Go, bo, g0o, rho), check_input=False)
        f = _quad(w, Go).sqrt() - ro * rho
        new = (f > 0) & ~found
        lo, f_lo = torch.where(new, rho, lo), torch.where(new, f, f_lo)
        w_lo = torch.where(new.unsqueeze(-1), w, w_lo)
        found = found | new
        if bool(found.all()):
            break
    # never found (the root is below 2⁻⁶⁰ of the bracket): the dual-cone direction pulled back into
    # the ball, whose worst-task value is within rounding of the optimum there
    pulled = p + u[idx] * (ro / dist[idx].clamp_min(torch.finfo(Gb.dtype).tiny)).unsqueeze(-1)
    w, rho_s, done = _search(Go, bo, g0o, ro, lo, f_lo, w_lo, max_iter)
    res = torch.where(found.unsqueeze(-1), p + w / rho_s.unsqueeze(-1), pulled)
    out[idx] = res
    ok[idx] = done | ~found
    return out, ok


def cagrad_weights(Gb: Tensor, c: float, norm_eps: float = 0.0, max_iter: int = 100) -> Tensor:
    """CAGrad weights for a batch of Gram matrices (B, k, k) (see :class:`CAGrad`); raises
    :class:`~taskgrad.methods.MethodConvergenceError` if the root search needs more than
    ``max_iter`` steps.
    """
    w, ok = _cagrad_torch(Gb, c, norm_eps, max_iter)
    if not bool(ok.all()):
        _raise_not_converged(max_iter)
    return w


def _raise_not_converged(max_iter: int) -> None:
    raise MethodConvergenceError(
        f"CAGrad: the root search did not converge in max_iter={max_iter} steps; raise max_iter "
        "(each step is exact on an active set, so a few tens suffice for k ≤ 100)."
    )


def _cagrad_torch(Gb: Tensor, c: float, norm_eps: float, max_iter: int) -> tuple[Tensor, Tensor]:
    B, k = Gb.shape[0], Gb.shape[-1]
    uniform = torch.full((B, k), 1.0 / k, dtype=Gb.dtype, device=Gb.device)
    ok = torch.ones(B, dtype=torch.bool, device=Gb.device)
    if c == 0 or k == 1:
        return uniform, ok
    b = Gb.sum(-1) / k
    g0sq = (b.sum(-1) / k).clamp_min(0.0)
    r = c * g0sq.sqrt()
    diag = torch.diagonal(Gb, dim1=-2, dim2=-1)
    smax = diag.amax(-1).clamp_min(0).sqrt()
    w0 = min_norm_simplex(Gb, check_input=False)
    n0 = _quad(w0, Gb).sqrt()
    pos = r > 0
    stationary = (
        pos & (n0 <= norm_eps * diag.sum(-1).clamp_min(0).sqrt())
        if norm_eps > 0
        else torch.zeros_like(pos)
    )
    degenerate = pos & ~stationary & (n0 <= degenerate_tol(Gb.dtype) * smax)
    regular = pos & ~stationary & ~degenerate
    out = torch.where(stationary.unsqueeze(-1), torch.zeros_like(uniform), uniform)
    if bool(regular.any()):
        idx = regular.nonzero().squeeze(-1)
        Gr, rr = Gb[idx], r[idx]
        w, rho, done = _search(
            Gr, b[idx], g0sq[idx], rr, torch.zeros_like(rr), n0[idx], w0[idx], max_iter
        )
        out[idx] = uniform[idx] + w / rho.unsqueeze(-1)
        ok[idx] = done
    if bool(degenerate.any()):
        idx = degenerate.nonzero().squeeze(-1)
        out[idx], ok[idx] = _degenerate(Gb[idx], c, max_iter)
    return out, ok
