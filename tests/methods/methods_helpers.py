"""Shared helpers for the method-zoo tests: random Jacobians and relative errors."""

from __future__ import annotations

import torch
from torch import Tensor


def jacobian(
    k: int, P: int, seed: int, correlated: float = 0.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """k random task gradients in R^P (rows), optionally sharing a common component."""
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(k, P, generator=g, dtype=dtype)
    if correlated:
        J = J + correlated * torch.randn(P, generator=g, dtype=dtype)
    return J


def gram(J: Tensor) -> Tensor:
    return J @ J.T


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (or ‖a‖ when b = 0)."""
    a, b = a.double(), b.double()
    den = b.norm()
    return float((a - b).norm() / (den if den > 0 else 1.0))
