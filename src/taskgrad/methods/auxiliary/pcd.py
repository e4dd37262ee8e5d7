"""PCD, Priority-Constrained Descent (TMLR 2026): follow the primary gradient while every secondary
objective keeps a fraction tau of its normalized first-order progress.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...solvers import nnls
from .._common import clone_state
from ..base import Weighting
from ..gram._zoo_checks import check_real
from ..registry import register_method

__all__ = ["PCD"]


def _check_tau(tau: float | Tensor) -> float | Tensor:
    if isinstance(tau, Tensor):
        if tau.dim() != 1 or not tau.is_floating_point():
            raise ValueError(
                f"tau must be a float or a 1-D float tensor with one value per secondary task, got "
                f"shape {tuple(tau.shape)} and dtype {tau.dtype}."
            )
        if not bool(((tau >= 0) & (tau <= 1)).all()):
            raise ValueError(f"tau must be in [0, 1] entrywise, got {tau.tolist()}.")
        return tau.detach().clone()
    return check_real("tau", tau, low=0.0, high=1.0)


def pcd_multipliers(Gn: Tensor, tau: Tensor) -> Tensor:
    """Weights [1, μ₂, …, μ_k] of PCD's solution d = g₁ + Σ μⱼgⱼ.

    The problem is

        min ½‖d − g₁‖²  s.t.  ⟨gⱼ, d⟩ ≥ τⱼ‖gⱼ‖²  (j ≥ 2),

    for the float64 Gram matrix ``Gn`` of g₁..g_k. The multipliers solve the dual
    min_{μ≥0} ½μᵀG₂₂μ + μᵀ(G₂₁ − τ⊙diag G₂₂) (a non-negative QP, solved exactly by
    :func:`taskgrad.solvers.nnls`). When the constraints have no common solution (the dual is
    unbounded, e.g. two opposite secondary gradients with τ > 0) they are dropped: [1, 0, …, 0].
    """
    k = Gn.shape[-1]
    w = torch.zeros(k, dtype=Gn.dtype)
    w[0] = 1.0
    if k == 1:
        return w
    Gs = Gn[1:, 1:]
    c = Gn[1:, 0] - tau * Gs.diagonal()
    mu = nnls(Gs, c, check_input=False)
    slack = Gs @ mu + c  # ⟨gⱼ, d⟩ − τⱼ‖gⱼ‖² at d = g₁ + Σ μⱼgⱼ
    scale = float(Gn.diagonal().max().clamp_min(torch.finfo(Gn.dtype).tiny))
    if bool((slack < -1e-7 * scale).any()):
        return w  # infeasible constraints: the regularized dual diverged, d violates some of them
    w[1:] = mu.clamp_min(0.0)
    return w


@register_method(
    "pcd",
    description=(
        "PCD: follow the primary gradient, each secondary task keeps a fraction tau of its "
        "normalized progress."
    ),
    paper=(
        "Varam et al., Not All Objectives Are Born Equal: Priority-Constrained Descent, TMLR 2026"
    ),
    aliases=("PCD", "priority-constrained-descent"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=False,
    scale_invariant=False,
    stateful=True,
    random=False,
    batched=False,
)
class PCD(Weighting):
    """Priority-Constrained Descent (Varam et al., TMLR 2026; TorchJD's PCD).

    "Not all objectives are born equal". Task 0 is the primary objective, tasks 1.. the
    secondary ones:

        d̃ = argmin_d ½‖d − g̃₀‖²  s.t.  ⟨g̃ⱼ, d⟩ ≥ τⱼ‖g̃ⱼ‖²  for j ≥ 1,

    with normalized gradients g̃ᵢ = sᵢgᵢ, sᵢ = 1/√(v̂ᵢ + eps), v̂ᵢ the bias-corrected EMA (decay
    ``beta``) of ‖gᵢ‖² over the calls; the update is d̃ rescaled to ‖g₀‖. Zero g₀ (or d̃ = 0 up
    to the Gram's rounding) gives d = 0; infeasible constraints are dropped (d = g₀).

    Relation to :class:`~taskgrad.methods.PrimaryAux`: with the current norms as the scales
    (``beta=0, eps=0``: g̃ᵢ = gᵢ/‖gᵢ‖), PCD's constraint ⟨d, g̃ⱼ⟩ ≥ τ on the unit primary is
    PrimaryAux's progress margin ⟨u, gⱼ/‖gⱼ‖⟩ ≥ τ‖g₀‖ scaled by ‖g₀‖, so PCD(τ) returns exactly
    PrimaryAux(progress=τ)'s u rescaled to ‖g₀‖ (and with τ = 0, PrimaryAux's projection of g₀
    on the dual cone {⟨gⱼ, u⟩ ≥ 0}, rescaled). The differences: PCD normalizes by a moving
    average of the norms (β > 0), so a task whose gradient shrinks for one step keeps its
    margin in absolute terms; it always steps with ‖d‖ = ‖g₀‖ while PrimaryAux keeps the length
    of the projection (shorter when the constraints bite); when the margins are infeasible PCD
    drops them all (d = g₀, which may then raise an auxiliary loss) while PrimaryAux falls back to
    the τ = 0 projection (never raising one). PrimaryAux's robust ``margin`` (⟨u, gᵢ⟩ ≥ m‖u‖)
    is a cone around the constraints, scale-free in u, with no PCD counterpart.

    ``tau`` is a float in [0, 1] or a tensor of k − 1 values; ``beta`` in [0, 1); ``eps`` ≥ 0.
    Stateful (the EMA and its step count); unbatched Gram matrices only.
    """

    # state, set by reset()
    _ema: Tensor | None
    _steps: int

    def __init__(self, tau: float | Tensor = 0.02, beta: float = 0.999, eps: float = 1e-8) -> None:
        self.tau = _check_tau(tau)
        self.beta = check_real("beta", beta, low=0.0, high=1.0, high_open=True)
        self.eps = check_real("eps", eps, low=0.0)
        self.reset()

    def _taus(self, k: int) -> Tensor:
        if isinstance(self.tau, Tensor):
            if self.tau.shape[0] != k - 1:
                raise ValueError(
                    f"tau has {self.tau.shape[0]} values but there are {k - 1} secondary tasks; "
                    "pass one value per secondary task (all tasks but the first)."
                )
            return self.tau.to(torch.float64)
        return torch.full((k - 1,), self.tau, dtype=torch.float64)

    def _scales(self, sq_norms: Tensor) -> Tensor:
        k = sq_norms.shape[0]
        if self._ema is None or self._ema.shape[0] != k:
            self._ema = torch.zeros(k, dtype=torch.float64)
            self._steps = 0
        self._ema = self.beta * self._ema + (1.0 - self.beta) * sq_norms
        self._steps += 1
        v = self._ema / (1.0 - self.beta**self._steps)
        den = (v + self.eps).sqrt()
        return torch.where(
            den > 0, 1.0 / den.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(den)
        )

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        if gram.dim() != 2:
            raise ValueError(
                "PCD keeps one moving average per task and takes one (k, k) Gram matrix, got "
                "shape "
                f"{tuple(gram.shape)}."
            )
        G = gram.detach().to(device="cpu", dtype=torch.float64)
        G = 0.5 * (G + G.T)
        k = G.shape[0]
        taus = self._taus(k)
        sq = G.diagonal().clamp_min(0.0)
        s = self._scales(sq)
        out = torch.zeros(k, dtype=torch.float64)
        precision = 10.0 * torch.finfo(gram.dtype).eps
        if sq[0] > 0:
            Gn = G * torch.outer(s, s)
            w = pcd_multipliers(Gn, taus)
            d_sq = w @ Gn @ w
            size = (w.abs() @ Gn.diagonal().clamp_min(0.0).sqrt()) ** 2
            if d_sq > precision * size:
                out = w * s * (sq[0] / d_sq).sqrt()
        return out.to(device=gram.device, dtype=gram.dtype)

    def reset(self) -> None:
        self._ema = None
        self._steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"ema": clone_state(self._ema), "steps": self._steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._ema = clone_state(state_dict["ema"])
        self._steps = int(state_dict["steps"])
