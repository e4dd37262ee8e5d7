"""Gradient aggregators in Gram form: G = J Jᵀ (..., k, k) -> weights w (..., k), d = Jᵀw.

Every method here sees the task gradients only through their inner products, so it costs one
Gram matrix and one weighted backward. QP-type inner problems use :mod:`taskgrad.solvers`
(exact, batched, on the device of G); Nash-MTL/FairGrad and CAGrad solve their convex problems
to machine precision (Newton's method, and an exact parametric min-norm search).

Two implementations of the Gram-based methods, chosen by ``impl``:

* ``"torch"``: batched torch operators on the device of G (the reference path);
* ``"numba"``: compiled loops on the host, one problem at a time (:mod:`._kernels`), the same
  algorithm with the same decisions and tolerances in float64. At k ≈ 40 a solve is a few
  hundred small operators on the torch path (~10 µs of overhead each) and well under a
  millisecond compiled.
* ``"auto"`` (default): ``"numba"`` for a Gram matrix on the CPU; on a GPU ``"numba"`` when the
  batch is small (B·k³ ≤ 2²²: the k×k copy to the host and its single synchronization are
  cheaper than the torch path's sequence of kernel launches), else ``"torch"``.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..solvers import min_norm_simplex, nnls
from ._common import (
    check_generator,
    check_positive_losses,
    clone_state,
    diag_norms,
    flat_gram,
    generator_state,
    set_generator_state,
    work_dtype,
)
from .base import Weighting

__all__ = [
    "CAGrad",
    "DBMTL",
    "AlignedMTL",
    "DualProj",
    "FairGrad",
    "IMTLG",
    "MGDAUB",
    "NashMTL",
    "PCGrad",
    "GradVac",
    "RandomGradient",
    "UPGrad",
    "UndefinedMethodError",
    "alpha_fair_weights",
]


Impl = Literal["auto", "numba", "torch"]

# on a GPU, "auto" runs the host kernels when B·k³ is at most this (≈ a few ms of host work)
GPU_HOST_MAX_WORK = 1 << 22


HAVE_NUMBA = importlib.util.find_spec("numba") is not None
_KERNELS: ModuleType | None = None


def _k() -> ModuleType:
    """The compiled kernels (:mod:`._kernels`), imported on first use: importing numba costs
    ~0.3 s, which ``import taskgrad`` does not pay until a host kernel runs."""
    global _KERNELS
    if _KERNELS is None:
        from . import _kernels

        _KERNELS = _kernels
    return _KERNELS


def _check_impl(impl: str) -> str:
    if impl not in ("auto", "numba", "torch"):
        raise ValueError(f"impl must be 'auto', 'numba' or 'torch', got {impl!r}.")
    if impl == "numba" and not HAVE_NUMBA:
        raise ImportError("impl='numba' needs numba (pip install numba); use impl='torch' or 'auto'.")
    return impl


def _use_host(impl: str, G: Tensor) -> bool:
    """Whether the compiled host kernels solve the problems of G (..., k, k) (see the module doc)."""
    if impl == "torch" or not HAVE_NUMBA:
        return False
    if impl == "numba":
        return True
    if G.device.type != "cpu" and G.numel() * G.shape[-1] > GPU_HOST_MAX_WORK:
        return False
    # numba found but not importable (e.g. an unsupported NumPy): the kernels would run as plain
    # Python, 10-20x slower than the torch path, so "auto" keeps the torch path
    return bool(_k().HAVE_NUMBA)


def _host(x: Tensor) -> np.ndarray:
    """A float64 C-contiguous NumPy copy/view of x on the host (one copy + sync from a GPU)."""
    return np.ascontiguousarray(x.detach().to("cpu", torch.float64).numpy())


def _host_gram(G: Tensor) -> np.ndarray:
    """(B, k, k) float64 symmetrized copy of G on the host: :func:`flat_gram` in NumPy."""
    k = G.shape[-1]
    a = G.detach().reshape(-1, k, k).to("cpu", torch.float64).numpy()
    return 0.5 * (a + a.transpose(0, 2, 1))


def _from_host(
    w: np.ndarray, shape: tuple[int, ...] | torch.Size, like: Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """The host result w as a tensor of ``shape`` on the device of ``like``, in ``dtype``
    (default: that of ``like``)."""
    return torch.from_numpy(w).to(device=like.device, dtype=dtype or like.dtype).reshape(shape)


def _raise_not_pd(status: np.ndarray) -> None:
    if bool((status == _k().NOT_PD).any()):
        raise torch.linalg.LinAlgError("a free block is not positive definite even with a ridge of 1e-2.")


def _draw_permutations(B: int, k: int, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """(B, k, n) long: for each problem b and each task i, ``torch.randperm(n)`` in that order
    (the same draws as one ``randperm`` per task, as TorchJD and the papers do)."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perms = [torch.randperm(n, generator=generator, device=gen_device) for _ in range(B * k)]
    if not perms:
        return torch.zeros(B, k, n, dtype=torch.long, device=device)
    return torch.stack(perms).reshape(B, k, n).to(device)


def _check_pref(pref: Tensor | None, k: int, like: Tensor) -> Tensor:
    if pref is None:
        return torch.full((k,), 1.0 / k, dtype=like.dtype, device=like.device)
    if pref.dim() != 1 or pref.shape[0] != k:
        raise ValueError(f"pref_vector must have shape ({k},) (one weight per task), got {tuple(pref.shape)}.")
    return pref.to(dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------
# PCGrad and GradVac: sequential projections, vectorized over tasks and the batch.


class PCGrad(Weighting):
    """PCGrad (Yu et al., 2020, Algorithm 1) as weights on the original gradients.

    For each task i: gᵢᴾᶜ ← gᵢ; for j ≠ i in a random order, if ⟨gᵢᴾᶜ, gⱼ⟩ < 0 then
    gᵢᴾᶜ ← gᵢᴾᶜ − ⟨gᵢᴾᶜ, gⱼ⟩/‖gⱼ‖² · gⱼ. The update is d = Σᵢ gᵢᴾᶜ. Writing gᵢᴾᶜ = Σⱼ Cᵢⱼgⱼ,
    every inner product is a row of C G, so w = 1ᵀC from the Gram matrix alone.

    The order for task i is ``torch.randperm(k, generator=generator)`` (drawn task by task),
    so a run is reproducible from the generator's seed; ``generator=None`` uses torch's
    global RNG. The generator's state is part of :meth:`state_dict`.

    ``impl`` (see the module doc): the orders are drawn the same way on every path, so a seeded
    run gives the same weights (to rounding) with ``"numba"`` and ``"torch"``. On a GPU,
    ``"numba"`` copies the k×k Gram matrix to the host (one synchronization) and the weights back.
    """

    def __init__(self, generator: torch.Generator | None = None, impl: Impl = "auto") -> None:
        self.generator = check_generator(generator)
        self.impl = _check_impl(impl)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        if _use_host(self.impl, gram):
            Gn = _host_gram(gram)
            B, k = Gn.shape[0], Gn.shape[-1]
            perms = _draw_permutations(B, k, k, self.generator, torch.device("cpu"))
            return _from_host(_k().pcgrad(Gn, perms.numpy()), gram.shape[:-1], gram)
        Gb, batch = flat_gram(gram)
        B, k = Gb.shape[0], Gb.shape[-1]
        perms = _draw_permutations(B, k, k, self.generator, Gb.device)
        C = torch.eye(k, dtype=Gb.dtype, device=Gb.device).expand(B, k, k).clone()
        diag = torch.diagonal(Gb, dim1=-2, dim2=-1)
        rows = torch.arange(k, device=Gb.device)
        for p in range(k):
            j = perms[:, :, p]  # (B, k): the task that row i visits at position p
            Gj = Gb.gather(1, j.unsqueeze(-1).expand(B, k, k))  # Gj[b, i] = G[b, j[b, i]]
            inner = (C * Gj).sum(-1)  # ⟨gᵢᴾᶜ, gⱼ⟩
            gjj = diag.gather(-1, j)
            apply = (j != rows) & (inner < 0) & (gjj > 0)
            delta = torch.where(apply, -inner / torch.where(apply, gjj, torch.ones_like(gjj)), torch.zeros_like(inner))
            C.scatter_add_(-1, j.unsqueeze(-1), delta.unsqueeze(-1))
        return C.sum(-2).to(gram.dtype).reshape(*batch, k)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_generator_state(self.generator, state_dict.get("generator"))


class GradVac(Weighting):
    """Gradient Vaccine (Wang et al., 2021) in Gram form, with its EMA of target similarities.

    For each task i and each j ≠ i in a random order: φᵢⱼ = ⟨gᵢᴾᶜ, gⱼ⟩/(‖gᵢᴾᶜ‖‖gⱼ‖ + ε);
    if φᵢⱼ < φ̂ᵢⱼ, gᵢᴾᶜ += ‖gᵢᴾᶜ‖(φ̂ᵢⱼ√(1−φᵢⱼ²) − φᵢⱼ√(1−φ̂ᵢⱼ²))/(‖gⱼ‖√(1−φ̂ᵢⱼ²) + ε) · gⱼ;
    then φ̂ᵢⱼ ← (1−β)φ̂ᵢⱼ + βφᵢⱼ. The update is d = Σᵢ gᵢᴾᶜ (φ̂ starts at 0).

    State: φ̂ of shape (..., k, k), advanced once per call; plus the generator's state.
    Orders come from ``torch.randperm(k − 1, generator=generator)`` for each task in turn, on
    every ``impl`` (see the module doc; ``"numba"`` on a GPU copies G and φ̂ to the host and back).
    """

    def __init__(
        self, beta: float = 0.5, eps: float = 1e-8, generator: torch.Generator | None = None, impl: Impl = "auto"
    ) -> None:
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta!r}.")
        if eps < 0:
            raise ValueError(f"eps must be ≥ 0, got {eps!r}.")
        self.beta = beta
        self.eps = eps
        self.generator = check_generator(generator)
        self.impl = _check_impl(impl)
        self._phi: Tensor | None = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        batch, k = gram.shape[:-2], gram.shape[-1]
        B = batch.numel()
        dtype = work_dtype(gram)
        if self._phi is None or self._phi.shape != (*batch, k, k):
            if self._phi is not None:
                raise ValueError(
                    f"GradVac's state is for Gram matrices of shape {tuple(self._phi.shape)}, got "
                    f"{tuple(gram.shape)}; call reset() before changing the number of tasks."
                )
            self._phi = torch.zeros(*batch, k, k, dtype=dtype, device=gram.device)
        if _use_host(self.impl, gram):
            ph = np.array(self._phi.detach().reshape(B, k, k).to("cpu", torch.float64).numpy())  # a copy
            w = np.ones((B, k))
            if k > 1:
                perms = _draw_permutations(B, k, k - 1, self.generator, torch.device("cpu"))
                w = _k().gradvac(_host_gram(gram), perms.numpy(), ph, float(self.beta), float(self.eps))
            self._phi = _from_host(ph, (*batch, k, k), gram, dtype)
            return _from_host(w, (*batch, k), gram)
        Gb, _ = flat_gram(gram)
        phi_hat = self._phi.to(Gb.dtype).reshape(B, k, k).clone()
        C = torch.eye(k, dtype=Gb.dtype, device=Gb.device).expand(B, k, k).clone()
        if k > 1:
            perms = _draw_permutations(B, k, k - 1, self.generator, Gb.device)
            rows = torch.arange(k, device=Gb.device)
            # others[i] = [j for j in range(k) if j != i]; visit others[i][perm]
            others = torch.arange(k - 1, device=Gb.device).expand(k, k - 1)
            others = others + (others >= rows.unsqueeze(-1)).long()
            order = others.expand(B, k, k - 1).gather(-1, perms)
            cG = C @ Gb  # row i: ⟨gᵢᴾᶜ, gⱼ⟩ for all j
            norm_j_all = diag_norms(Gb)
            for p in range(k - 1):
                j = order[:, :, p]
                dot = cG.gather(-1, j.unsqueeze(-1)).squeeze(-1)
                norm_i = (cG * C).sum(-1).clamp_min(0.0).sqrt()
                norm_j = norm_j_all.gather(-1, j)
                phi = dot / (norm_i * norm_j + self.eps)
                ph = phi_hat.gather(-1, j.unsqueeze(-1)).squeeze(-1)
                fix = phi < ph
                s_phi = (1.0 - phi * phi).clamp_min(0.0).sqrt()
                s_hat = (1.0 - ph * ph).clamp_min(0.0).sqrt()
                w = norm_i * (ph * s_phi - phi * s_hat) / (norm_j * s_hat + self.eps)
                w = torch.where(fix, w, torch.zeros_like(w))
                C.scatter_add_(-1, j.unsqueeze(-1), w.unsqueeze(-1))
                Gj = Gb.gather(1, j.unsqueeze(-1).expand(B, k, k))
                cG = cG + w.unsqueeze(-1) * Gj
                phi_hat.scatter_(-1, j.unsqueeze(-1), ((1.0 - self.beta) * ph + self.beta * phi).unsqueeze(-1))
        self._phi = phi_hat.reshape(*batch, k, k)
        return C.sum(-2).to(gram.dtype).reshape(*batch, k)

    def reset(self) -> None:
        self._phi = None

    def state_dict(self) -> dict[str, Any]:
        return {"phi_hat": clone_state(self._phi), "generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._phi = clone_state(state_dict.get("phi_hat"))
        set_generator_state(self.generator, state_dict.get("generator"))


# --------------------------------------------------------------------------------------------
# CAGrad


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
        self.impl = _check_impl(impl)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        scale = {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        if _use_host(self.impl, gram):
            k = gram.shape[-1]
            wn, status = _k().cagrad(
                _host_gram(gram), float(self.c), float(self.norm_eps), int(self.max_iter), 10 * k + 50
            )
            _raise_not_pd(status)
            return _from_host(wn / scale, gram.shape[:-1], gram)
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


# --------------------------------------------------------------------------------------------
# IMTL-G, Aligned-MTL, UPGrad, DualProj


class IMTLG(Weighting):
    """IMTL-G (Liu et al., 2021), in the pseudo-inverse form of Quinton & Rey (2024).

    The update d = Jᵀw has equal projections on every unit gradient, ⟨d, gᵢ/‖gᵢ‖⟩ = const:
    Gw ∝ σ (σᵢ = ‖gᵢ‖), so w = G⁺σ / 1ᵀG⁺σ (0 when 1ᵀG⁺σ vanishes). With linearly independent
    gradients this is the paper's closed form; the direction of d is invariant to rescaling any
    task's loss.
    """

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        Gb, batch = flat_gram(gram)
        k = Gb.shape[-1]
        v = (torch.linalg.pinv(Gb, hermitian=True) @ diag_norms(Gb).unsqueeze(-1)).squeeze(-1)
        s = v.sum(-1, keepdim=True)
        tiny = s.abs() <= 1e-12 * v.abs().sum(-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        w = torch.where(tiny, torch.zeros_like(v), v / torch.where(tiny, torch.ones_like(s), s))
        return w.to(gram.dtype).reshape(*batch, k)


class AlignedMTL(Weighting):
    """Aligned-MTL (Senushkin et al., 2023): align the task gradients' principal components.

    With G = VΛVᵀ restricted to its rank r (λ > λ_max·k·ε), the aligned Jacobian is
    Ĵ = B J with B = √λ_s V_r Λ_r^{-½} V_rᵀ (condition number 1: ĴĴᵀ = λ_s·I on the range),
    and d = Ĵᵀp for the preference vector p (default 1/k): w = Bp. ``scale_mode`` picks λ_s:
    "min" (smallest nonzero eigenvalue, the paper), "median" or "rmse" (the mean eigenvalue,
    the official code). Rank 0 gives w = p. Same conventions as TorchJD's AlignedMTL.
    """

    def __init__(self, pref_vector: Tensor | None = None, scale_mode: Literal["min", "median", "rmse"] = "min") -> None:
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}.")
        self.pref_vector = pref_vector
        self.scale_mode = scale_mode

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        Gb, batch = flat_gram(gram)
        k = Gb.shape[-1]
        p = _check_pref(self.pref_vector, k, Gb)
        w = (aligned_mtl_balance(Gb, self.scale_mode, eps_dtype=gram.dtype) @ p.unsqueeze(-1)).squeeze(-1)
        return w.to(gram.dtype).reshape(*batch, k)


def aligned_mtl_balance(Gb: Tensor, scale_mode: str = "min", eps_dtype: torch.dtype | None = None) -> Tensor:
    """The balance transformation B (B, k, k) of Aligned-MTL for Gram matrices (B, k, k)."""
    B_, k = Gb.shape[0], Gb.shape[-1]
    lam, V = torch.linalg.eigh(Gb)  # ascending
    eps = torch.finfo(eps_dtype or Gb.dtype).eps
    tol = lam.amax(-1, keepdim=True) * k * eps
    valid = lam > tol
    rank = valid.sum(-1)
    inv_sqrt = torch.where(valid, lam.clamp_min(torch.finfo(Gb.dtype).tiny).rsqrt(), torch.zeros_like(lam))
    first = (k - rank).clamp_max(k - 1)  # index of the smallest valid eigenvalue
    if scale_mode == "min":
        idx = first
    elif scale_mode == "median":
        idx = (first + (rank - 1).clamp_min(0) // 2).clamp_max(k - 1)
    else:
        idx = None
    if idx is None:
        scale = (lam * valid).sum(-1) / rank.clamp_min(1)
    else:
        scale = lam.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    Bm = scale.clamp_min(0).sqrt()[:, None, None] * (V * inv_sqrt.unsqueeze(-2)) @ V.transpose(-1, -2)
    eye = torch.eye(k, dtype=Gb.dtype, device=Gb.device).expand(B_, k, k)
    return torch.where((rank == 0)[:, None, None], eye, Bm)


def _host_nnls(Q: np.ndarray, C: np.ndarray) -> np.ndarray:
    """λ[b, m] ≥ 0 minimizing ½λᵀQ[b]λ + C[b, m]ᵀλ (Q (B, k, k), C (B, m, k)) by the compiled
    port of :func:`taskgrad.solvers.nnls` (float64, on the host)."""
    X, status = _k().nnls_rows(Q, np.ascontiguousarray(C), 10 * Q.shape[-1] + 50)
    _raise_not_pd(status)
    return X


def _host_pref(pref: Tensor | None, k: int) -> np.ndarray:
    if pref is None:
        return np.full(k, 1.0 / k)
    return _host(_check_pref(pref, k, pref))


class UPGrad(Weighting):
    """UPGrad (Quinton & Rey, 2024): project each pᵢgᵢ onto the dual cone of the gradients and sum.

    Projection of Jᵀu onto {x : Jx ≥ 0} is Jᵀv with v = argmin vᵀGv s.t. v ≥ u; with
    u = pᵢeᵢ and v = pᵢeᵢ + λ, λ ≥ 0 solves the NNLS ½λᵀGλ + pᵢ(Geᵢ)ᵀλ. The k problems are
    one batched :func:`~taskgrad.solvers.nnls` call (``impl="torch"``) or k calls of its compiled
    port (``"numba"``, see the module doc); w = Σᵢ vⁱ. The result never conflicts with a task
    gradient: Gw ≥ 0.
    """

    def __init__(self, pref_vector: Tensor | None = None, impl: Impl = "auto") -> None:
        self.pref_vector = pref_vector
        self.impl = _check_impl(impl)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        if _use_host(self.impl, gram):
            Gn = _host_gram(gram)
            p = _host_pref(self.pref_vector, Gn.shape[-1])
            lam = _host_nnls(Gn, Gn * p[:, None])  # (B, k, k): row i is λ of problem i, c = pᵢGeᵢ
            return _from_host(lam.sum(-2) + p, gram.shape[:-1], gram)
        Gb, batch = flat_gram(gram)
        B, k = Gb.shape[0], Gb.shape[-1]
        p = _check_pref(self.pref_vector, k, Gb)
        Q = Gb.unsqueeze(1).expand(B, k, k, k)
        c = Gb * p.unsqueeze(-1)  # c[b, i, :] = pᵢ G[b, :, i] (G symmetric)
        lam = nnls(Q, c, check_input=False)
        v = lam + torch.diag_embed(p).expand(B, k, k)
        return v.sum(-2).to(gram.dtype).reshape(*batch, k)


class DualProj(Weighting):
    """DualProj: project the preference combination Jᵀp (default the mean gradient) onto the dual
    cone of the task gradients (GEM's Equation 11; Quinton & Rey, 2024).

    w = argmin vᵀGv s.t. v ≥ p, solved as the NNLS of λ = v − p ≥ 0 minimizing
    ½λᵀGλ + (Gp)ᵀλ (``impl`` as in :class:`UPGrad`). The result never conflicts with a task
    gradient: Gw ≥ 0.
    """

    def __init__(self, pref_vector: Tensor | None = None, impl: Impl = "auto") -> None:
        self.pref_vector = pref_vector
        self.impl = _check_impl(impl)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        if _use_host(self.impl, gram):
            Gn = _host_gram(gram)
            p = _host_pref(self.pref_vector, Gn.shape[-1])
            lam = _host_nnls(Gn, (Gn @ p)[:, None, :])[:, 0]
            return _from_host(lam + p, gram.shape[:-1], gram)
        Gb, batch = flat_gram(gram)
        k = Gb.shape[-1]
        p = _check_pref(self.pref_vector, k, Gb)
        lam = nnls(Gb, Gb @ p, check_input=False)
        return (lam + p).to(gram.dtype).reshape(*batch, k)


# --------------------------------------------------------------------------------------------
# Nash-MTL and FairGrad: α-fair weights by Newton's method


class UndefinedMethodError(ValueError):
    """The method has no solution for this Gram matrix (e.g. Nash-MTL with a zero gradient)."""


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
    if _use_host(_check_impl(impl), G):
        wn, okn = _k().alpha_fair(_host_gram(G), float(alpha), int(max_iter))
        w = _from_host(wn, G.shape[:-1], G, work_dtype(G))
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


class NashMTL(Weighting):
    """Nash-MTL (Navon et al., 2022): the Nash bargaining solution, solved exactly.

    The bargaining direction maximizes Σ log⟨gᵢ, d⟩ over ‖d‖ ≤ 1; d = Jᵀα with α > 0 solving
    Gα = 1/α (elementwise), the minimizer of the strictly convex ½αᵀGα − Σ log αᵢ. The
    reference solves it with a sequence of convex (CCP) problems in cvxpy; here Newton's method
    (see :func:`alpha_fair_weights`) reaches the same fixed point to machine precision.

    As in the reference (and TorchJD): weights are recomputed every ``update_weights_every``
    calls and reused in between (state: the call count and the last α), and when ``max_norm``
    > 0 the weights are scaled so that ‖Jᵀα‖ ≤ max_norm. Undefined problems (a zero gradient,
    0 in the convex hull) raise :class:`UndefinedMethodError`.
    """

    def __init__(
        self, max_norm: float = 1.0, update_weights_every: int = 1, max_iter: int = 100, impl: Impl = "auto"
    ) -> None:
        if max_norm < 0:
            raise ValueError(f"max_norm must be ≥ 0 (0 disables clipping), got {max_norm!r}.")
        if not isinstance(update_weights_every, int) or update_weights_every < 1:
            raise ValueError(f"update_weights_every must be a positive int, got {update_weights_every!r}.")
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.max_iter = max_iter
        self.impl = _check_impl(impl)
        self._step = 0
        self._alpha: Tensor | None = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        if self._step % self.update_weights_every == 0 or self._alpha is None:
            alpha, ok = alpha_fair_weights(gram, 1.0, self.max_iter, self.impl)
            if not bool(ok.all()):
                _raise_undefined("Nash-MTL")
            self._alpha = alpha
        self._step += 1
        alpha = self._alpha.to(gram.dtype)
        if self.max_norm > 0:
            norm = torch.einsum("...i,...ij,...j->...", alpha, gram, alpha).clamp_min(0).sqrt()
            factor = torch.where(norm > self.max_norm, self.max_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.ones_like(norm))
            alpha = alpha * factor.unsqueeze(-1)
        return alpha

    def reset(self) -> None:
        self._step = 0
        self._alpha = None

    def state_dict(self) -> dict[str, Any]:
        return {"step": self._step, "alpha": clone_state(self._alpha)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._step = int(state_dict["step"])
        self._alpha = clone_state(state_dict.get("alpha"))


class FairGrad(Weighting):
    """FairGrad (Ban & Ji, 2024): α-fair resource allocation among tasks, solved exactly.

    w > 0 solves (Gw)ᵢ = wᵢ^(−1/α) (Equation 4 of the paper), the unique minimizer of a
    strictly convex function (see :func:`alpha_fair_weights`); α = 1 is Nash-MTL's
    equation, α → ∞ approaches MGDA-like max-min fairness, and α = 0 is linear scalarization
    (uniform weights 1/k, as in the paper and TorchJD). Undefined problems (no d with
    ⟨gᵢ, d⟩ > 0 for all i) raise :class:`UndefinedMethodError`.
    """

    def __init__(self, alpha: float = 1.0, max_iter: int = 100, impl: Impl = "auto") -> None:
        if alpha < 0 or alpha != alpha:
            raise ValueError(f"alpha must be ≥ 0, got {alpha!r}.")
        self.alpha = alpha
        self.max_iter = max_iter
        self.impl = _check_impl(impl)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        k = gram.shape[-1]
        if self.alpha == 0:
            return torch.full(gram.shape[:-1], 1.0 / k, dtype=gram.dtype, device=gram.device)
        w, ok = alpha_fair_weights(gram, self.alpha, self.max_iter, self.impl)
        if not bool(ok.all()):
            _raise_undefined(f"FairGrad(alpha={self.alpha})")
        return w.to(gram.dtype)


# --------------------------------------------------------------------------------------------
# DB-MTL, MGDA-UB, Random


class DBMTL(Weighting):
    """DB-MTL's gradient-magnitude balancing step (Lin et al., 2023), in Gram form.

    DB-MTL trains on log-losses; the gradient of log(Lᵢ + ε) is g̃ᵢ = gᵢ/(Lᵢ + ε) with norm
    ‖g̃ᵢ‖ = σᵢ/(Lᵢ + ε). Each is rescaled to the largest norm: d = Σᵢ (max_j‖g̃ⱼ‖/(‖g̃ᵢ‖ + ε'))·g̃ᵢ,
    i.e. w = max_j‖g̃ⱼ‖ / ((‖g̃ᵢ‖ + ε')(Lᵢ + ε)) on the raw losses. Needs the Gram diagonal and
    the losses (> −ε). The paper's EMA of past gradient vectors (β > 0) is not expressible from
    the current Gram matrix and is not implemented: this is its β = 0 step (as in LibMTL with β=0).
    """

    needs = frozenset({"gram", "losses"})

    def __init__(self, eps: float = 1e-8) -> None:
        self.eps = eps

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None and losses is not None
        check_positive_losses("DB-MTL", losses, -self.eps)
        Ld = losses.to(gram.dtype) + self.eps
        norms = diag_norms(gram) / Ld
        scale = norms.amax(-1, keepdim=True) / (norms + self.eps)
        return scale / Ld


class MGDAUB(Weighting):
    """MGDA with the gradient normalizations of Sener & Koltun (2018, "MGDA-UB" code).

    The gradients are normalized gᵢ/nᵢ with nᵢ = ‖gᵢ‖ ("l2"), Lᵢ ("loss"), Lᵢ‖gᵢ‖ ("loss+l2")
    or 1 ("none"); α = min-norm point of the normalized gradients' hull (Gram D⁻¹GD⁻¹, exact),
    and, as in the reference code, α weighs the raw losses (w = α). With ``scale_weights``
    the weights are α/n instead, so that d is the min-norm point of the normalized gradients.
    ``impl`` (see the module doc): ``"torch"`` calls :func:`~taskgrad.solvers.min_norm_simplex`,
    ``"numba"`` its compiled port (same pivoting and tolerances).
    """

    def __init__(
        self,
        normalization: Literal["l2", "loss", "loss+l2", "none"] = "l2",
        scale_weights: bool = False,
        impl: Impl = "auto",
    ) -> None:
        if normalization not in ("l2", "loss", "loss+l2", "none"):
            raise ValueError(f"normalization must be 'l2', 'loss', 'loss+l2' or 'none', got {normalization!r}.")
        self.normalization = normalization
        self.scale_weights = scale_weights
        self.impl = _check_impl(impl)
        self.needs = frozenset({"gram", "losses"}) if "loss" in normalization else frozenset({"gram"})

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        n = torch.ones_like(gram[..., 0])
        if "loss" in self.normalization:
            assert losses is not None
            check_positive_losses(f"MGDA-UB({self.normalization!r})", losses)
            n = n * losses.to(gram.dtype)
        if "l2" in self.normalization:
            n = n * diag_norms(gram)
        dead = n <= 0
        inv = torch.where(dead, torch.zeros_like(n), 1.0 / torch.where(dead, torch.ones_like(n), n))
        Gn = gram * inv.unsqueeze(-1) * inv.unsqueeze(-2)
        alpha = min_norm_weights(Gn, self.impl)
        return alpha * inv if self.scale_weights else alpha


def min_norm_weights(G: Tensor, impl: Impl = "auto") -> Tensor:
    """MGDA's α in the simplex minimizing αᵀGα for G (..., k, k), in G's dtype: the solvers'
    :func:`~taskgrad.solvers.min_norm_simplex` (``impl="torch"``) or its compiled port."""
    if not _use_host(_check_impl(impl), G):
        return min_norm_simplex(G, check_input=False)
    wn, status = _k().min_norm(_host_gram(G), 10 * G.shape[-1] + 50)
    _raise_not_pd(status)
    return _from_host(wn, G.shape[:-1], G)


def random_softmax_weights(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    """softmax of standard normal draws along the last dim (RLW's default distribution)."""
    dev = generator.device if generator is not None else like.device
    z = torch.randn(shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)
    return torch.softmax(z, dim=-1)


class RandomGradient(Weighting):
    """Random gradient weighting (Lin et al., 2022, Algorithm 2): d = Σ λᵢgᵢ with
    λ = softmax(z), z ~ N(0, I) drawn afresh each call from ``generator`` (or torch's global RNG).

    Declares the Gram matrix only to be a gradient aggregator (it does not read it); the
    loss-based twin is :class:`~taskgrad.methods.RLW`.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = check_generator(generator)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        return random_softmax_weights(tuple(gram.shape[:-1]), gram, self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_generator_state(self.generator, state_dict.get("generator"))

