"""DB-MTL gradient-magnitude step: log-loss gradients rescaled to the largest norm.

Lin et al., Dual-Balancing for Multi-Task Learning, 2023.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import (
    check_positive_losses,
    clone_state,
    diag_norms,
)
from .._validate import check_real
from ..base import Weighting
from ..registry import register_method

__all__ = ["DBMTL"]


@register_method(
    "db-mtl",
    description="DB-MTL gradient-magnitude step: log-loss gradients rescaled to the largest norm.",
    paper="Lin et al., Dual-Balancing for Multi-Task Learning, 2023",
    aliases=("DBMTL", "DB_MTL"),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=False,
    random=False,
)
class DBMTL(Weighting):
    """DB-MTL's gradient-magnitude balancing step (Lin et al., 2023), in Gram form.

    DB-MTL trains on log-losses; the gradient of log(Lᵢ + ε) is g̃ᵢ = gᵢ/(Lᵢ + ε) with norm
    ‖g̃ᵢ‖ = σᵢ/(Lᵢ + ε). Each is rescaled to the largest norm: d = Σᵢ (max_j‖g̃ⱼ‖/(‖g̃ᵢ‖ + ε'))·g̃ᵢ,
    i.e. w = max_j‖g̃ⱼ‖ / ((‖g̃ᵢ‖ + ε')(Lᵢ + ε)) on the raw losses. Needs the Gram diagonal and
    the losses (> −ε). This is the β = 0 step (the default).

    ``beta`` > 0 is the paper's (and LibMTL's DB_beta/DB_beta_sigma) moving average of the
    log-loss gradient vectors: at call t, Bᵢ ← g̃ᵢ + β t^(−beta_sigma) (Bᵢ − g̃ᵢ) (B starts at 0)
    and d = Σᵢ (max_j‖Bⱼ‖/(‖Bᵢ‖ + ε')) Bᵢ. The update is then no longer a combination of the
    current gradients: the method needs the Jacobian (``needs = {"jacobian", "losses"}``,
    ``aggregate(J, L)``; :func:`taskgrad.backward` materializes J) and keeps B (k × P) as state.
    """

    needs = frozenset({"gram", "losses"})

    def __init__(self, eps: float = 1e-8, beta: float = 0.0, beta_sigma: float = 0.0) -> None:
        self.eps = check_real("DBMTL", "eps", eps, low=0.0)
        self.beta = check_real("DBMTL", "beta", beta, low=0.0, high=1.0)
        self.beta_sigma = check_real("DBMTL", "beta_sigma", beta_sigma, low=0.0)
        if self.beta > 0:  # the moving average needs the Jacobian
            self.needs = frozenset({"jacobian", "losses"})  # type: ignore[misc]
        self.reset()

    def reset(self) -> None:
        self._buffer: Tensor | None = None
        self._step = 0

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None) -> Tensor:
        """The direction d for the Jacobian J (k, P); with ``beta`` > 0 it advances the average."""
        if self.beta == 0:
            return super().aggregate(jacobian, losses)
        from ..jacobian._base import check_jacobian

        k = check_jacobian(jacobian)
        if losses is None:
            raise ValueError("DBMTL needs the task losses: call aggregate(J, losses=L).")
        check_positive_losses("DB-MTL", losses, -self.eps)
        if losses.shape != (k,):
            raise ValueError(
                f"losses must have shape ({k},) for a Jacobian with {k} rows, got "
                f"{tuple(losses.shape)}."
            )
        J = jacobian.detach()
        g = J / (losses.to(J) + self.eps).unsqueeze(1)
        if self._buffer is None:
            self._buffer = torch.zeros_like(J)
        elif self._buffer.shape != J.shape:
            raise ValueError(
                f"DBMTL holds a gradient average of shape {tuple(self._buffer.shape)}, got a "
                "Jacobian of "
                f"{tuple(J.shape)}; call reset() before changing the tasks or parameters."
            )
        self._step += 1
        buf = g + (self.beta / self._step**self.beta_sigma) * (self._buffer.to(J) - g)
        self._buffer = buf
        norms = buf.norm(dim=1)
        return (norms.max() / (norms + self.eps)) @ buf

    def state_dict(self) -> dict[str, Any]:
        if self.beta == 0:
            return {}
        return {"buffer": clone_state(self._buffer), "step": self._step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.beta == 0:
            super().load_state_dict(state_dict)
            return
        self._buffer = clone_state(state_dict["buffer"])
        self._step = int(state_dict["step"])

    def compute(self, *, gram: Tensor, losses: Tensor) -> Tensor:
        if self.beta > 0:
            raise TypeError(
                "DBMTL with beta > 0 averages past gradient vectors and needs the Jacobian: call "
                "aggregate(J, losses=L), or train with taskgrad.backward (it materializes J)."
            )
        check_positive_losses("DB-MTL", losses, -self.eps)
        Ld = losses.to(gram.dtype) + self.eps
        norms = diag_norms(gram) / Ld
        scale = norms.amax(-1, keepdim=True) / (norms + self.eps)
        return scale / Ld
