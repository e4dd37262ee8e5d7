"""MoCo (Fernando et al., ICLR 2023): tracked gradients and simplex weights against gradient
bias.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import clone_state
from ..gram._zoo_checks import check_real
from ..registry import register_method
from ._base import JacobianAggregator

__all__ = ["MoCo"]


@register_method(
    "moco",
    description="MoCo: tracked (bias-corrected) task gradients with softmax-simplex weights.",
    paper=(
        "Fernando et al., Mitigating Gradient Bias in Multi-objective Learning: A Provably "
        "Convergent Approach, ICLR 2023"
    ),
    aliases=("MoCo",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=True,
    random=False,
)
class MoCo(JacobianAggregator):
    """MoCo (Fernando et al., ICLR 2023), as LibMTL's MoCo.

    "Mitigating gradient bias in multi-objective learning". At call t, with
    ĝᵢ = gᵢ Lᵢ/(‖gᵢ‖ + 1e-8):

        Y ← Y − β t^(−β_σ) (Y − Ĝ),   λ ← softmax(λ − γ t^(−γ_σ) (YYᵀ + ρI) λ),   d = Yᵀλ,

    starting from Y = 0 and λ = 1/k. The update is the tracked Y, not J: a Jacobian method
    (needs J and the losses; the state Y is another k × P buffer). Parameter names follow
    LibMTL's MoCo_beta, MoCo_beta_sigma, MoCo_gamma, MoCo_gamma_sigma, MoCo_rho.
    """

    needs = frozenset({"jacobian", "losses"})

    def __init__(
        self,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
    ) -> None:
        self.beta = check_real("beta", beta, low=0.0, low_open=True, high=1.0)
        self.beta_sigma = check_real("beta_sigma", beta_sigma, low=0.0)
        self.gamma = check_real("gamma", gamma, low=0.0, low_open=True)
        self.gamma_sigma = check_real("gamma_sigma", gamma_sigma, low=0.0)
        self.rho = check_real("rho", rho, low=0.0)
        self.reset()

    def reset(self) -> None:
        self._y: Tensor | None = None
        self._lambda: Tensor | None = None
        self._step = 0

    @property
    def weights(self) -> Tensor | None:
        """The current simplex weights λ on the tracked gradients (None before the first call)."""
        return None if self._lambda is None else self._lambda.clone()

    def direction(self, jacobian: Tensor, losses: Tensor | None) -> Tensor:
        assert losses is not None
        J = jacobian.detach()
        k = J.shape[0]
        if self._y is None:
            self._y = torch.zeros_like(J)
            self._lambda = J.new_full((k,), 1.0 / k)
        elif self._y.shape != J.shape:
            raise ValueError(
                f"MoCo tracks gradients of shape {tuple(self._y.shape)}, got {tuple(J.shape)}; "
                "call "
                "reset() before changing the tasks or parameters."
            )
        assert self._lambda is not None
        self._step += 1
        t = float(self._step)
        g_hat = J / (J.norm(dim=1, keepdim=True) + 1e-8) * losses.to(J).unsqueeze(1)
        y = self._y.to(J)
        y = y - (self.beta / t**self.beta_sigma) * (y - g_hat)
        lam = self._lambda.to(J)
        M = y @ y.T + self.rho * torch.eye(k, dtype=J.dtype, device=J.device)
        lam = torch.softmax(lam - (self.gamma / t**self.gamma_sigma) * (M @ lam), dim=-1)
        self._y, self._lambda = y, lam
        return y.T @ lam

    def state_dict(self) -> dict[str, Any]:
        return clone_state({"y": self._y, "lambda": self._lambda, "step": self._step})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        s = clone_state(state_dict)
        self._y, self._lambda, self._step = s["y"], s["lambda"], int(s["step"])
