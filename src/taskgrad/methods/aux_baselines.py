"""Primary/auxiliary baselines: task 0 is the primary task, tasks 1..k−1 are auxiliaries.

Besides :class:`~taskgrad.methods.PrimaryAux` (the exact projection), the baselines users
compare against: primary only, the plain sum, cosine-gated auxiliaries (Du et al., 2018),
PCGrad on the auxiliaries only, and OL-AUX-style online auxiliary weights (Lin et al., 2019).
All work from the Gram matrix: G₀ᵢ = ⟨g₀, gᵢ⟩, σᵢ = √Gᵢᵢ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._common import clone_state, diag_norms
from .base import Weighting

__all__ = ["CosineGatedAux", "OLAux", "PCGradAux", "PrimaryOnly", "Sum"]


def _primary_first(k: int, name: str) -> None:
    if k < 1:
        raise ValueError(f"{name} needs at least the primary task.")


class PrimaryOnly(Weighting):
    """Primary only: w = (1, 0, …, 0) (the auxiliaries are ignored)."""

    needs = frozenset({"losses"})

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        w = torch.zeros_like(losses)
        w[..., 0] = 1.0
        return w


class Sum(Weighting):
    """The plain sum Σ Lᵢ: w = 1 for every task."""

    needs = frozenset({"losses"})

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        return torch.ones_like(losses)


def _cosines(G: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """cos(g₀, gᵢ) for every task (..., k), and a mask of zero gradients (cos := 0 there)."""
    sig = diag_norms(G)
    dead = sig <= eps * sig.amax(-1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
    denom = sig[..., :1] * sig
    safe = torch.where(dead | dead[..., :1], torch.ones_like(denom), denom)
    cos = torch.where(dead | dead[..., :1], torch.zeros_like(denom), G[..., 0, :] / safe)
    return cos.clamp(-1.0, 1.0), dead


class CosineGatedAux(Weighting):
    """Auxiliary gradients gated by cosine similarity with the primary (Du et al., 2018).

    Unweighted: wᵢ = 1 if cos(g₀, gᵢ) > 0 else 0. Weighted: wᵢ = max(0, cos(g₀, gᵢ)).
    The primary has weight 1. A zero gradient counts as cos = 0 (gated off).
    """

    def __init__(self, weighted: bool = False, eps: float = 1e-12) -> None:
        self.weighted = weighted
        self.eps = eps

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        cos, _ = _cosines(gram, self.eps)
        w = cos.clamp_min(0.0) if self.weighted else (cos > 0).to(gram.dtype)
        w = w.clone()
        w[..., 0] = 1.0
        return w


class PCGradAux(Weighting):
    """PCGrad on the auxiliaries only: an auxiliary gradient that conflicts with the primary
    (⟨gᵢ, g₀⟩ < 0) is projected off it, gᵢ − ⟨gᵢ, g₀⟩/‖g₀‖² g₀; the primary is kept as is.

    d = g₀ + Σᵢ gᵢ', so wᵢ = 1 for auxiliaries and w₀ = 1 − Σ_{conflicting i} G₀ᵢ/G₀₀.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = eps

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        g00 = gram[..., 0, 0]
        scale = torch.diagonal(gram, dim1=-2, dim2=-1).amax(-1).clamp_min(torch.finfo(gram.dtype).tiny)
        alive = g00 > self.eps * scale
        conflict = (gram[..., 0, 1:]).clamp_max(0.0).sum(-1)
        w0 = 1.0 - torch.where(alive, conflict / torch.where(alive, g00, torch.ones_like(g00)), torch.zeros_like(g00))
        w = torch.ones_like(gram[..., 0])
        w[..., 0] = w0
        return w


class OLAux(Weighting):
    """OL-AUX-style online auxiliary weights (Lin et al., 2019), from ⟨g₀, gᵢ⟩.

    One step of the primary loss after an update with weights w changes it to first order by
    −η Σᵢ wᵢ⟨g₀, gᵢ⟩, so its gradient in wᵢ is −η⟨g₀, gᵢ⟩. The auxiliary weights (init
    ``init``) take a gradient step with learning rate ``lr`` (η folded in) on the sum of these
    inner products over the last ``horizon`` calls: wᵢ ← wᵢ + lr·Σₜ⟨g₀, gᵢ⟩ₜ (cosines instead
    with ``normalize=True``), clamped at ≥ 0 when ``nonnegative``. The primary weight is 1.
    State: the weights, the running sum and the call count.
    """

    def __init__(
        self, lr: float = 0.1, horizon: int = 1, init: float = 1.0, normalize: bool = False, nonnegative: bool = True
    ) -> None:
        if not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}.")
        if lr < 0:
            raise ValueError(f"lr must be ≥ 0, got {lr!r}.")
        self.lr = lr
        self.horizon = horizon
        self.init = init
        self.normalize = normalize
        self.nonnegative = nonnegative
        self.reset()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        shape = gram.shape[:-1]
        if self._w is None:
            self._w = torch.full(shape, float(self.init), dtype=gram.dtype, device=gram.device)
            self._w[..., 0] = 1.0
            self._acc = torch.zeros_like(self._w)
        elif self._w.shape != shape:
            raise ValueError(f"OLAux's state is for {tuple(self._w.shape)} weights, got a Gram for {tuple(shape)}; call reset().")
        w = self._w.to(gram.dtype).clone()
        signal = _cosines(gram, 1e-12)[0] if self.normalize else gram[..., 0, :]
        assert self._acc is not None
        self._acc = self._acc + signal.to(self._acc.dtype)
        self._n += 1
        if self._n % self.horizon == 0:
            new = self._w + self.lr * self._acc
            if self.nonnegative:
                new = new.clamp_min(0.0)
            new[..., 0] = 1.0
            self._w = new
            self._acc = torch.zeros_like(self._acc)
        return w

    def reset(self) -> None:
        self._w: Tensor | None = None
        self._acc: Tensor | None = None
        self._n = 0

    def state_dict(self) -> dict[str, Any]:
        return {"w": clone_state(self._w), "acc": clone_state(self._acc), "n": self._n}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._w = clone_state(state_dict["w"])
        self._acc = clone_state(state_dict["acc"])
        self._n = int(state_dict["n"])
