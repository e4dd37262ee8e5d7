"""ExcessMTL (He et al., ICML 2024): robust task weights from excess-risk estimates."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import clone_state
from ..gram._zoo_checks import check_int, check_real
from ..registry import register_method
from ._base import JacobianAggregator

__all__ = ["ExcessMTL"]


@register_method(
    "excess-mtl",
    description="ExcessMTL: exponentiated-gradient weights from per-task excess-risk estimates.",
    paper="He et al., Robust Multi-Task Learning with Excess Risks, ICML 2024",
    aliases=("ExcessMTL",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class ExcessMTL(JacobianAggregator):
    """ExcessMTL (He, Zhang, Cheng & Yang, "Robust multi-task learning with excess risks",
    ICML 2024; TorchJD's ExcessMTL). With S the running sum of the squared Jacobians (k × P,
    an AdaGrad diagonal per task), each task's excess risk is estimated as
    eᵢ = Σ_p J²ᵢₚ / √(Sᵢₚ + 1e-7) (Eqs. 6-7), divided by the baseline e⁰ (the first call's, or the
    mean over ``n_warmup_steps`` warm-up calls, which return uniform weights), and the weights
    take one exponentiated-gradient step w ← softmax(log w + η e) (Eq. 9; w starts at 1/k,
    η = ``robust_step_size``). d = Jᵀw. Memory: the state S is another k × P buffer.
    """

    def __init__(self, robust_step_size: float = 1.0, n_warmup_steps: int = 0) -> None:
        self.robust_step_size = check_real(
            "robust_step_size", robust_step_size, low=0.0, low_open=True
        )
        self.n_warmup_steps = check_int("n_warmup_steps", n_warmup_steps, low=0)
        self.reset()

    def reset(self) -> None:
        self._sq_sum: Tensor | None = None
        self._weights: Tensor | None = None
        self._baseline: Tensor | None = None
        self._warmup_sum: Tensor | None = None
        self._steps = 0

    def weights(self, jacobian: Tensor) -> Tensor:
        """Advance the state with J and return the task weights w (k,)."""
        J = jacobian.detach()
        k = J.shape[0]
        if self._sq_sum is None or self._sq_sum.shape != J.shape:
            if self._sq_sum is not None:
                raise ValueError(
                    "ExcessMTL holds statistics for a Jacobian of shape "
                    f"{tuple(self._sq_sum.shape)}, got "
                    f"{tuple(J.shape)}; call reset() before changing the tasks or parameters."
                )
            self._sq_sum = torch.zeros_like(J)
            self._warmup_sum = J.new_zeros(k)
            self._weights = J.new_full((k,), 1.0 / k)
        sq = J**2
        self._sq_sum = self._sq_sum.to(J) + sq
        excess = (sq / torch.sqrt(self._sq_sum + 1e-7)).sum(1)
        assert self._weights is not None and self._warmup_sum is not None
        if self._steps < self.n_warmup_steps:
            self._warmup_sum = self._warmup_sum.to(J) + excess
            self._steps += 1
            return self._weights.to(J).clone()
        self._steps += 1
        if self._baseline is None:
            if self.n_warmup_steps > 0:
                self._baseline = self._warmup_sum.to(J) / self.n_warmup_steps
                excess = excess / (self._baseline + 1e-7)
            else:
                self._baseline = excess  # the first call's excess risks are the baseline, used raw
        else:
            excess = excess / (self._baseline.to(J) + 1e-7)
        self._weights = torch.softmax(
            torch.log(self._weights.to(J)) + self.robust_step_size * excess, dim=0
        )
        return self._weights.clone()

    def direction(self, jacobian: Tensor, losses: Tensor | None) -> Tensor:
        return self.weights(jacobian) @ jacobian

    def state_dict(self) -> dict[str, Any]:
        return clone_state(
            {
                "sq_sum": self._sq_sum,
                "weights": self._weights,
                "baseline": self._baseline,
                "warmup_sum": self._warmup_sum,
                "steps": self._steps,
            }
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        s = clone_state(state_dict)
        self._sq_sum, self._weights, self._baseline = s["sq_sum"], s["weights"], s["baseline"]
        self._warmup_sum, self._steps = s["warmup_sum"], int(s["steps"])
