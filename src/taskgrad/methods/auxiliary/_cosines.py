"""Cosines between the primary gradient g₀ and every task gradient, from the Gram matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from .._common import (
    diag_norms,
)

__all__ = ["_cosines"]


def _cosines(G: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """cos(g₀, gᵢ) for every task (..., k), and a mask of zero gradients (cos := 0 there)."""
    sig = diag_norms(G)
    dead = sig <= eps * sig.amax(-1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
    denom = sig[..., :1] * sig
    safe = torch.where(dead | dead[..., :1], torch.ones_like(denom), denom)
    cos = torch.where(dead | dead[..., :1], torch.zeros_like(denom), G[..., 0, :] / safe)
    return cos.clamp(-1.0, 1.0), dead
