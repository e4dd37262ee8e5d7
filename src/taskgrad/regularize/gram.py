"""The norm constraint as one more auxiliary task in the Gram matrix (composes with any method).

With task gradients g₁..g_k (rows of J) and the auxiliary gradient a of R(θ) (θ for L2, sign(θ)
for L1), the augmented Gram is

    G⁺ = [[J Jᵀ, J a], [aᵀ Jᵀ, ‖a‖²]]   ((k+1) × (k+1)),

and a method picks w⁺ = method(gram=G⁺); the update is u = Jᵀw + w_{k+1}·a. With
``PrimaryAux(n_primary=n)`` the norm is one more auxiliary: u raises neither the auxiliary
losses nor R to first order (⟨u, a⟩ ≥ 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..methods.base import Weighting
from ..sources import as_loss_vector, check_params
from ..training.backward import BackwardResult
from .projection import Norm, _check_norm, aux_gradient, norm_value

__all__ = ["augment_gram", "norm_constrained_backward"]


def augment_gram(gram: Tensor, ja: Tensor, aa: Tensor) -> Tensor:
    """G⁺ = [[G, Ja], [(Ja)ᵀ, ‖a‖²]] from G (..., k, k), Ja = (⟨gᵢ, a⟩)ᵢ (..., k) and ‖a‖² (...)."""
    if (
        gram.shape[-1] != gram.shape[-2]
        or ja.shape != gram.shape[:-1]
        or aa.shape != gram.shape[:-2]
    ):
        raise ValueError(
            f"shapes do not fit: gram {tuple(gram.shape)} needs ja {tuple(gram.shape[:-1])} and aa "
            f"{tuple(gram.shape[:-2])}, got ja {tuple(ja.shape)} and aa {tuple(aa.shape)}."
        )
    top = torch.cat([gram, ja.unsqueeze(-1)], -1)
    bottom = torch.cat([ja, aa.unsqueeze(-1)], -1).unsqueeze(-2)
    return torch.cat([top, bottom], -2)


def norm_constrained_backward(
    losses: Sequence[Tensor] | Tensor,
    params: Sequence[Tensor],
    method: Weighting,
    norm: Norm = "l2",
) -> BackwardResult:
    """Fill ``.grad`` with u = Σ wᵢ∇Lᵢ + w_{k+1}·a, where w = method(gram=G⁺) over k+1 tasks.

    The Gram is over ``params`` (the constrained parameters, e.g. the shared encoder): their
    Jacobian (k, P) is formed explicitly by batched VJPs. Parameters outside ``params`` (task
    heads) receive Σ wᵢ∇Lᵢ from one weighted backward, as :func:`taskgrad.backward` does. For a
    method that needs losses, the (k+1)-th loss is R(θ) (½‖θ‖² or ‖θ‖₁).

    Returns a :class:`~taskgrad.BackwardResult` with the k+1 weights and G⁺.
    """
    _check_norm(norm)
    if not isinstance(method, Weighting):
        raise TypeError(
            f"method must be a taskgrad Weighting (e.g. PrimaryAux()), got {type(method).__name__}."
        )
    L = as_loss_vector(losses)
    plist = check_params(params)
    k = L.shape[0]
    eye = torch.eye(k, dtype=L.dtype, device=L.device)
    rows = torch.autograd.grad(
        L, plist, grad_outputs=eye, retain_graph=True, allow_unused=True, is_grads_batched=True
    )
    auxs = [aux_gradient(p.detach(), norm) for p in plist]
    gd = torch.float64 if L.device.type == "cpu" else L.dtype
    G = torch.zeros(k, k, dtype=gd, device=L.device)
    ja = torch.zeros(k, dtype=gd, device=L.device)
    aa = torch.zeros((), dtype=gd, device=L.device)
    for r, a in zip(rows, auxs, strict=True):
        ad = a.to(gd).reshape(-1)
        aa = aa + ad @ ad
        if r is not None:
            rd = r.to(gd).reshape(k, -1)
            G = G + rd @ rd.T
            ja = ja + rd @ ad
    G = 0.5 * (G + G.T)
    Gp = augment_gram(G, ja, aa)
    L_det = L.detach()
    Lp = torch.cat([L_det.to(gd), norm_value(plist, norm).to(gd).reshape(1)])
    w = method(gram=Gp if "gram" in method.needs else None, losses=Lp).detach()
    if w.shape != (k + 1,) or not bool(torch.isfinite(w).all()):
        raise FloatingPointError(
            f"{type(method).__name__} returned weights {w.tolist()} for {k + 1} tasks."
        )
    (w[:k].to(L.dtype) * L).sum().backward()
    with torch.no_grad():
        for p, a in zip(plist, auxs, strict=True):
            extra = (w[k].to(p.dtype) * a).to(p.dtype)
            if p.grad is None:
                p.grad = extra.clone()
            else:
                p.grad.add_(extra)
    return BackwardResult(weights=w, gram=Gp, losses=L_det)
