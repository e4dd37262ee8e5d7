"""The coefficient-free decay step: the primary/auxiliary projection with the norm as the auxiliary.

The primary gradient is g = ∇L(θ); the auxiliary loss is R(θ) = ½‖θ‖² (L2) or ‖θ‖₁ (L1) with
(sub)gradient a = θ or a = sign(θ) (sign(0) = 0). The update direction closest to g that does
not increase R to first order is the one-auxiliary closed form of
:func:`taskgrad.solvers.primary_aux`:

    u = g + λ·a,   λ = relu(−⟨g, a⟩)/‖a‖²   (λ = 0 when a = 0),

so that ⟨u, a⟩ = max(⟨g, a⟩, 0) ≥ 0: a step θ ← θ − ηu never increases R to first order, and
when the constraint is inactive u = g exactly. ‖λa‖ ≤ ‖g‖ always (Cauchy–Schwarz), so the step
never blows up however small ‖θ‖ is. Applied per group, each group's norm is kept from growing,
hence also the global one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Norm",
    "aux_gradient",
    "coefficient_free_direction",
    "decay_coefficient",
    "norm_value",
]

Norm = Literal["l2", "l1"]


def _check_norm(norm: str) -> None:
    if norm not in ("l2", "l1"):
        raise ValueError(f"norm must be 'l2' (R = ½‖θ‖²) or 'l1' (R = ‖θ‖₁), got {norm!r}.")


def aux_gradient(param: Tensor, norm: Norm = "l2") -> Tensor:
    """The auxiliary (sub)gradient a: θ for L2 (R = ½‖θ‖²), sign(θ) for L1 (R = ‖θ‖₁, 0 at 0)."""
    _check_norm(norm)
    return param if norm == "l2" else torch.sign(param)


def norm_value(params: Sequence[Tensor], norm: Norm = "l2") -> Tensor:
    """R(θ): ½‖θ‖² for L2, ‖θ‖₁ for L1, over all tensors (float64 on the CPU)."""
    _check_norm(norm)
    if not params:
        raise ValueError("params is empty.")
    acc = torch.zeros((), dtype=torch.float64, device=params[0].device)
    for p in params:
        pd = p.detach().double()
        acc = acc + (0.5 * (pd * pd).sum() if norm == "l2" else pd.abs().sum())
    return acc


def decay_coefficient(dot: Tensor, sq: Tensor) -> Tensor:
    """λ = relu(−dot)/sq elementwise, with λ = 0 where sq = 0 (a zero auxiliary gradient).

    ``dot`` = ⟨g, a⟩ and ``sq`` = ‖a‖² for each group; the result makes ⟨g + λa, a⟩ ≥ 0.
    """
    if dot.shape != sq.shape:
        raise ValueError(
            f"dot {tuple(dot.shape)} and sq {tuple(sq.shape)} must have the same shape."
        )
    if bool((sq < 0).any()) or not bool(torch.isfinite(dot).all() and torch.isfinite(sq).all()):
        raise FloatingPointError(
            "the inner products of the gradient and the weights are not finite (or ‖a‖² < 0); "
            "the gradient overflowed: lower the learning rate or check the loss."
        )
    zero = sq <= 0
    return torch.where(
        zero, torch.zeros_like(sq), torch.relu(-dot) / torch.where(zero, torch.ones_like(sq), sq)
    )


def _group_stats(
    grads: Sequence[Tensor | None], auxs: Sequence[Tensor], groups: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor]:
    dots, sqs = [], []
    dev = auxs[0].device
    for group in groups:
        dot = torch.zeros((), dtype=torch.float64, device=dev)
        sq = torch.zeros((), dtype=torch.float64, device=dev)
        for i in group:
            a = auxs[i].detach().double()
            sq = sq + (a * a).sum()
            g = grads[i]
            if g is not None:
                dot = dot + (g.detach().double() * a).sum()
        dots.append(dot)
        sqs.append(sq)
    return torch.stack(dots), torch.stack(sqs)


def _as_groups(n: int, groups: Sequence[Sequence[int]] | None) -> list[list[int]]:
    if groups is None:
        return [list(range(n))]
    out = [list(g) for g in groups]
    flat = [i for g in out for i in g]
    if sorted(flat) != sorted(set(flat)) or any(not 0 <= i < n for i in flat):
        raise ValueError(
            f"groups must be disjoint lists of indices into the {n} parameters, got {groups!r}."
        )
    return out


def coefficient_free_direction(
    grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    norm: Norm = "l2",
    groups: Sequence[Sequence[int]] | None = None,
) -> tuple[list[Tensor | None], Tensor]:
    """u = g + λ·a per group, λ = relu(−⟨g, a⟩)/‖a‖² (a = θ for L2, sign(θ) for L1).

    Args:
        grads: the primary gradient, one tensor (or None = zero) per parameter.
        params: the parameters θ, same order and shapes.
        norm: "l2" (a = θ) or "l1" (a = sign(θ)).
        groups: disjoint lists of indices, one λ each (default: one global group); indices in
            no group are returned unchanged.

    Returns:
        (u, λ): the projected gradients (None stays None unless λ > 0 for its group) and the
        (n_groups,) float64 coefficients. ⟨u, a⟩ ≥ 0 holds in every group.
    """
    _check_norm(norm)
    if len(grads) != len(params):
        raise ValueError(
            f"got {len(grads)} gradients for {len(params)} parameters; pass one per parameter."
        )
    if not params:
        raise ValueError("params is empty.")
    for i, (g, p) in enumerate(zip(grads, params, strict=True)):
        if g is not None and g.shape != p.shape:
            raise ValueError(
                f"grads[{i}] has shape {tuple(g.shape)} but params[{i}] has {tuple(p.shape)}."
            )
        if g is not None and g.is_sparse:
            raise ValueError(
                f"grads[{i}] is sparse; the coefficient-free projection needs dense gradients."
            )
    gs = _as_groups(len(params), groups)
    auxs = [aux_gradient(p.detach(), norm) for p in params]
    dot, sq = _group_stats(grads, auxs, gs)
    lam = decay_coefficient(dot, sq)
    out: list[Tensor | None] = list(grads)
    for j, group in enumerate(gs):
        if float(lam[j]) == 0.0:
            continue
        for i in group:
            step = (lam[j] * auxs[i].double()).to(params[i].dtype)
            g = grads[i]
            out[i] = step if g is None else g + step
    return out, lam
