"""The two-objective 2-D toy of CAGrad (Liu et al., 2021), as used by Nash-MTL and FAMO.

With θ = (x, y), c₊ = max(tanh(y/2), 0), c₋ = max(tanh(−y/2), 0) and ℓ = max(|·|, 5·10⁻⁶):

    f₁ = c₊·(log ℓ(−(x+7)/2 − tanh(−y)) + 6) + c₋·(((x−7)² + 0.1(y+8)²)/10 − 20)
    f₂ = c₊·(log ℓ(−(x−3)/2 + tanh(−y) + 2) + 6) + c₋·(((x+7)² + 0.1(y+8)²)/10 − 20)

and the losses are (s·f₁, f₂) with s = 0.1 in the Nash-MTL/FAMO version (s = 1: CAGrad's).
The Pareto set lies (to plotting accuracy) on y ≈ −8.3552 for x ∈ [−7, 7]; :func:`pareto_front`
computes the front numerically as the non-dominated points of a dense grid. The five standard
starting points are :data:`STARTS`. :func:`trajectories` runs Adam on θ with the update
d = Jᵀw, w = method(G = JJᵀ, L) for any :class:`~taskgrad.methods.Weighting`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..methods.errors import UndefinedMethodError
from ..methods.base import Weighting

__all__ = ["PARETO_Y", "STARTS", "pareto_front", "toy_losses", "trajectories"]

LOWER = 5e-6
PARETO_Y = -8.3552
STARTS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))


def toy_losses(theta: Tensor, scale: float = 0.1) -> Tensor:
    """(…, 2) losses (s·f₁, f₂) of the CAGrad toy at points θ of shape (…, 2) (formula above)."""
    if theta.shape[-1] != 2:
        raise ValueError(f"theta must have shape (..., 2), got {tuple(theta.shape)}.")
    x, y = theta[..., 0], theta[..., 1]
    c_pos = torch.clamp(torch.tanh(0.5 * y), min=0)
    c_neg = torch.clamp(torch.tanh(-0.5 * y), min=0)
    log1 = torch.clamp((0.5 * (-x - 7) - torch.tanh(-y)).abs(), min=LOWER).log() + 6
    log2 = torch.clamp((0.5 * (-x + 3) + torch.tanh(-y) + 2).abs(), min=LOWER).log() + 6
    sq1 = ((x - 7) ** 2 + 0.1 * (y + 8) ** 2) / 10 - 20
    sq2 = ((x + 7) ** 2 + 0.1 * (y + 8) ** 2) / 10 - 20
    f1 = c_pos * log1 + c_neg * sq1
    f2 = c_pos * log2 + c_neg * sq2
    return torch.stack([scale * f1, f2], dim=-1)


def pareto_front(scale: float = 0.1, n: int = 400) -> np.ndarray:
    """(m, 2) non-dominated loss pairs over an n×n grid of x ∈ [−7.5, 7.5], y ∈ [−10, −6.5],
    sorted by the first loss (a point is kept when no grid point has both losses ≤ and one <)."""
    xs = torch.linspace(-7.5, 7.5, n, dtype=torch.float64)
    ys = torch.linspace(-10.0, -6.5, n, dtype=torch.float64)
    X, Y = torch.meshgrid(xs, ys, indexing="ij")
    F = toy_losses(torch.stack([X, Y], -1).reshape(-1, 2), scale).numpy()
    order = np.lexsort((F[:, 1], F[:, 0]))
    F = F[order]
    best = np.minimum.accumulate(F[:, 1])
    keep = np.ones(len(F), dtype=bool)
    keep[1:] = F[1:, 1] < best[:-1]
    return F[keep]


def _jacobian(theta: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Losses L (B, 2) and Jacobians J (B, 2, 2) at B independent points θ (B, 2)."""
    th = theta.detach().requires_grad_(True)
    L = toy_losses(th, scale)
    J = torch.stack([torch.autograd.grad(L[:, i].sum(), th, retain_graph=i == 0)[0] for i in range(2)], 1)
    return L.detach(), J


def _batch_aware(state: Any, batch: int) -> bool:
    """True when every tensor in a method's state carries the batch as its leading dimension."""
    if isinstance(state, Tensor):
        return state.dim() >= 2 and state.shape[0] == batch
    if isinstance(state, dict):
        return all(_batch_aware(v, batch) for v in state.values())
    if isinstance(state, (list, tuple)):
        return all(_batch_aware(v, batch) for v in state)
    return True


def _weights(methods: list[Weighting], L: Tensor, G: Tensor, prev: Tensor, undefined: np.ndarray) -> Tensor:
    """Weights (B, 2): one batched call when ``methods`` has one (stateless) instance, else one
    call per start. Where a method is undefined (UndefinedMethodError, e.g. Nash-MTL with opposite
    gradients) the start keeps its previous weights, as the reference implementations do when
    their solver fails, and ``undefined`` counts it."""
    def one(m: Weighting, i: int) -> Tensor:
        try:
            return m(gram=G[i] if "gram" in m.needs else None, losses=L[i]).detach()
        except UndefinedMethodError:
            undefined[i] += 1
            return prev[i]

    if len(methods) == 1:
        m = methods[0]
        try:
            return m(gram=G if "gram" in m.needs else None, losses=L).detach()
        except UndefinedMethodError:
            return torch.stack([one(m, i) for i in range(L.shape[0])])
    return torch.stack([one(m, i) for i, m in enumerate(methods)])


def trajectories(
    make_method: Callable[[], Weighting],
    steps: int = 700,
    lr: float = 0.05,
    scale: float = 0.1,
    starts: Sequence[Sequence[float]] = STARTS,
    record_every: int = 1,
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """Adam(lr) on θ from each start with d = Jᵀw (Nash-MTL's protocol is lr 1e-3, 35k steps;
    the default lr 0.05 × 700 steps covers the same Adam path length in 50× fewer steps).

    All starts advance together: one batched method call when the method accepts a batch of
    Gram matrices and its state is per-problem (batched), otherwise one instance per start.
    Returns ``theta``, ``losses`` and ``weights``, each (n_starts, T, 2), recorded every
    ``record_every`` steps and at the last, and ``undefined_steps`` (n_starts,): steps where the
    method was undefined and the previous weights were kept. Non-finite losses or weights raise FloatingPointError.
    """
    if steps < 1 or lr <= 0 or record_every < 1:
        raise ValueError(f"steps and record_every must be ≥ 1 and lr > 0, got {steps}, {record_every}, {lr}.")
    theta = torch.nn.Parameter(torch.tensor([list(s) for s in starts], dtype=torch.float64))
    if theta.dim() != 2 or theta.shape[1] != 2:
        raise ValueError(f"starts must be a sequence of (x, y) pairs, got shape {tuple(theta.shape)}.")
    B = theta.shape[0]
    opt = torch.optim.Adam([theta], lr=lr)
    methods = [make_method()]
    L, J = _jacobian(theta, scale)
    undefined = np.zeros(B, dtype=np.int64)
    w = torch.full((B, 2), 0.5, dtype=torch.float64)
    try:  # batched only for methods without per-problem state (their state would mix the starts)
        w = _weights(methods, L, J @ J.transpose(-1, -2), w, undefined)
        if w.shape != (B, 2) or methods[0].state_dict():
            raise ValueError("not batchable")
    except Exception:
        methods = [make_method() for _ in range(B)]
        undefined[:] = 0
        w = _weights(methods, L, J @ J.transpose(-1, -2), torch.full((B, 2), 0.5, dtype=torch.float64), undefined)
    rec: dict[str, list] = {"theta": [], "losses": [], "weights": []}
    for t in range(steps + 1):
        if t > 0:
            L, J = _jacobian(theta, scale)
            w = _weights(methods, L, J @ J.transpose(-1, -2), w, undefined)
        if not (torch.isfinite(L).all() and torch.isfinite(w).all()):
            raise FloatingPointError(f"{type(methods[0]).__name__}: non-finite losses or weights at step {t}.")
        if t % record_every == 0 or t == steps:
            rec["theta"].append(theta.detach().numpy().copy())
            rec["losses"].append(L.numpy())
            rec["weights"].append(w.numpy())
        if t == steps:
            break
        theta.grad = (w.to(J.dtype).unsqueeze(1) @ J).squeeze(1)
        opt.step()
        if progress is not None:
            progress()
    out = {k: np.stack(v, axis=1) for k, v in rec.items()}
    out["undefined_steps"] = undefined
    return out
