"""CR-MOGM (Zhou et al., NeurIPS 2022): an exponential moving average of another method's
weights.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .._common import clone_state
from ..base import Weighting
from ..registry import register_method
from ._zoo_checks import check_length, check_real, check_vector

__all__ = ["CRMOGM"]


def _resolve(method: Weighting | str) -> Weighting:
    if isinstance(method, Weighting):
        return method
    if isinstance(method, str):
        from .. import registry

        return registry.get(method)
    raise TypeError(
        f"method must be a Weighting or a registered method name, got {type(method).__name__}."
    )


@register_method(
    "cr-mogm",
    description="CR-MOGM: exponential moving average of another method's weights (default UPGrad).",
    paper=(
        "Zhou et al., On the Convergence of Stochastic Multi-Objective Gradient Manipulation and "
        "Beyond, NeurIPS 2022"
    ),
    aliases=("CRMOGM",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class CRMOGM(Weighting):
    """CR-MOGM weight smoothing (Zhou et al., NeurIPS 2022) around any inner method.

    "On the convergence of stochastic multi-objective gradient manipulation and beyond":

        λₜ = α λₜ₋₁ + (1 − α) λ̂ₜ,   λ̂ₜ = method(G, L),

    with λ₀ = ``initial_weights`` or, by default, λ̂₁ (so the first output is λ̂₁). α = 0 returns
    the inner weights, α = 1 freezes λ₀. ``method`` is a Weighting or a registered name
    (default "upgrad"); the inner method's state is part of this one's. As TorchJD's
    CRMOGMWeighting.
    """

    def __init__(
        self,
        method: Weighting | str = "upgrad",
        alpha: float = 0.9,
        initial_weights: Tensor | None = None,
    ) -> None:
        self.method = _resolve(method)
        if "jacobian" in self.method.needs:
            raise ValueError(
                "CRMOGM smooths the weights of a Gram or loss method, not a Jacobian aggregator."
            )
        self.alpha = check_real("alpha", alpha, low=0.0, high=1.0)
        self.initial_weights = check_vector("initial_weights", initial_weights)
        self.needs = self.method.needs  # type: ignore[misc]
        self._lambda: Tensor | None = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        lam_hat = self.method(gram=gram, losses=losses)
        prev = self._lambda
        if prev is None:
            if self.initial_weights is not None:
                check_length("initial_weights", self.initial_weights, lam_hat.shape[-1])
                prev = self.initial_weights.to(lam_hat).expand(lam_hat.shape)
            else:
                prev = lam_hat
        elif prev.shape != lam_hat.shape:
            raise ValueError(
                f"CRMOGM holds weights of shape {tuple(prev.shape)} but the inner method returned "
                f"{tuple(lam_hat.shape)}; call reset() before changing the number of tasks."
            )
        lam = self.alpha * prev.to(lam_hat) + (1.0 - self.alpha) * lam_hat
        self._lambda = lam.detach()
        return lam

    def reset(self) -> None:
        self._lambda = None
        self.method.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": clone_state(self._lambda), "method": self.method.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lambda = clone_state(state_dict["lambda"])
        self.method.load_state_dict(state_dict["method"])
