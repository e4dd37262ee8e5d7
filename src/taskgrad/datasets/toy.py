"""The two-objective 2-D toy of CAGrad (Liu et al., 2021), as used by Nash-MTL and FAMO.

With θ = (x, y), c₊ = max(tanh(y/2), 0), c₋ = max(tanh(−y/2), 0) and ℓ = max(|·|, 5·10⁻⁶):

    f₁ = c₊·(log ℓ(−(x+7)/2 − tanh(−y)) + 6) + c₋·(((x−7)² + 0.1(y+8)²)/10 − 20)
    f₂ = c₊·(log ℓ(−(x−3)/2 + tanh(−y) + 2) + 6) + c₋·(((x+7)² + 0.1(y+8)²)/10 − 20)

and the losses are (s·f₁, f₂) with s = 0.1 in the Nash-MTL/FAMO version (s = 1: CAGrad's).
The Pareto set lies (to plotting accuracy) on y ≈ −8.3552 for x ∈ [−7, 7]; :func:`pareto_front`
computes the front numerically as the non-dominated points of a dense grid. The five standard
starting points are :data:`STARTS`. Training on it (:func:`taskgrad.bench.toy.trajectories`) is
part of the benchmark harness.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["LOWER", "PARETO_Y", "STARTS", "pareto_front", "toy_losses"]

LOWER = 5e-6
PARETO_Y = -8.3552
STARTS: tuple[tuple[float, float], ...] = (
    (-8.5, 7.5),
    (0.0, 0.0),
    (9.0, 9.0),
    (-7.5, -0.5),
    (9.0, -1.0),
)


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
    sorted by the first loss (a point is kept when no grid point has both losses ≤ and one <).
    """
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
