"""CAGrad: see :class:`CAGrad`."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ...solvers import min_norm_simplex
from .. import _impl
from .._common import (
    flat_gram,
)
from .._impl import Impl
from ..base import Weighting
from ..registry import register_method

__all__ = ["CAGrad", "cagrad_weights"]


@register_method(
    "cagrad",
    description="CAGrad: best worst-task improvement within a ball around the mean gradient (exact).",
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

    ``rescale``: 0 keeps d (the paper's Algorithm 1, TorchJD), 1 divides by 1 + c², 2 by 1 + c
    (the options of the official code). If the min-norm point of the hull is ≤ ``norm_eps``·√tr G
    (a Pareto-stationary point) the weights are 0, as in TorchJD.

    ``impl`` (see the module doc): ``"numba"`` runs the same search compiled, with each
    min-norm solve by the compiled port of the solvers' pivoting and the affine-path roots
    from a Cholesky solve of the active block (the torch path uses a pseudo-inverse of the KKT
    matrix); both stop on the same test, so they agree to rounding.
    """

    def __init__(
        self, c: float = 0.4, rescale: Literal[0, 1, 2] = 0, norm_eps: float = 1e-4, max_iter: int = 100,
        impl: Impl = "auto",
    ) -> None:
        if c < 0 or c != c:
            raise ValueError(f"c must be ≥ 0, got {c!r}.")
        if rescale not in (0, 1, 2):
            raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}.")
        self.c = c
        self.rescale = rescale
        self.norm_eps = norm_eps
        self.max_iter = max_iter
        self.impl = _impl.check_impl(impl)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        scale = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        if _impl.use_host(self.impl, gram):
            k = gram.shape[-1]
            wn, status = _impl.kernel("cagrad").cagrad(
                _impl.host_gram(gram), float(self.c), float(self.norm_eps), int(self.max_iter), 10 * k + 50
            )
            _impl.raise_not_pd(status)
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
    positive roots of ‖Jᵀw(ρ)‖² = r²ρ² (NaN where there is none)."""
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


def cagrad_weights(Gb: Tensor, c: float, norm_eps: float = 1e-4, max_iter: int = 100) -> Tensor:
    """CAGrad weights for a batch of Gram matrices (B, k, k) (see :class:`CAGrad`)."""
    B, k = Gb.shape[0], Gb.shape[-1]
    uniform = torch.full((B, k), 1.0 / k, dtype=Gb.dtype, device=Gb.device)
    if c == 0 or k == 1:
        return uniform
    b = Gb.sum(-1) / k
    g0sq = (b.sum(-1) / k).clamp_min(0.0)
    r = c * g0sq.sqrt()
    trace = torch.diagonal(Gb, dim1=-2, dim2=-1).sum(-1)
    w0 = min_norm_simplex(Gb, check_input=False)
    stationary = _quad(w0, Gb).sqrt() <= norm_eps * trace.clamp_min(0).sqrt()
    stationary = stationary | (r <= 0)
    r_safe = torch.where(stationary, torch.ones_like(r), r)
    smax = torch.diagonal(Gb, dim1=-2, dim2=-1).amax(-1).clamp_min(0).sqrt()
    lo = torch.zeros_like(r)
    f_lo = _quad(w0, Gb).sqrt()
    hi = 2.0 * smax / r_safe
    w_hi = min_norm_simplex(_shifted_gram(Gb, b, g0sq, hi), check_input=False)
    f_hi = _quad(w_hi, Gb).sqrt() - r_safe * hi
    rho, w, f = hi, w_hi, f_hi
    tol = 64 * torch.finfo(Gb.dtype).eps
    done = stationary.clone()
    side = torch.zeros(B, dtype=torch.long, device=Gb.device)
    cand_src = w0
    for _ in range(max_iter):
        c1, c2 = _affine_path_roots(Gb, b, cand_src, r_safe)
        in1 = (c1 > lo) & (c1 < hi)
        in2 = (c2 > lo) & (c2 < hi)
        cand = torch.where(in1, c1, c2)
        use = in1 | in2
        falsi = (lo * (-f_hi) + hi * f_lo) / (f_lo - f_hi).clamp_min(torch.finfo(Gb.dtype).tiny)
        new = torch.where(use, cand, falsi)
        new = torch.where(done, rho, new)
        w_new = min_norm_simplex(_shifted_gram(Gb, b, g0sq, new), check_input=False)
        f_new = _quad(w_new, Gb).sqrt() - r_safe * new
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
        side = torch.where(right, torch.ones_like(side), torch.where(left, -torch.ones_like(side), side))
        cand_src = w
        done = done | (f.abs() <= 1e-12 * r_safe * rho + tol * smax) | (hi - lo <= tol * hi)
        if bool(done.all()):
            break
    out = uniform + w / torch.where(stationary, torch.ones_like(rho), rho).unsqueeze(-1)
    pos = (r > 0).unsqueeze(-1)
    return torch.where(stationary.unsqueeze(-1) & pos, torch.zeros_like(out), torch.where(pos, out, uniform))
