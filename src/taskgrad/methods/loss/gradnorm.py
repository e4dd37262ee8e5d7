"""GradNorm: see :class:`GradNorm`."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .._common import (
    LearnedTaskParameter,
    check_positive_losses,
    clone_state,
    diag_norms,
)
from .._validate import check_choice, check_real
from ..base import Weighting
from ..registry import register_method

__all__ = ["GradNorm"]


@register_method(
    "gradnorm",
    description="GradNorm: learned weights balancing gradient norms and training rates.",
    paper="Chen et al., GradNorm, ICML 2018",
    aliases=("GradNorm",),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class GradNorm(Weighting):
    """GradNorm (Chen et al., 2018, Algorithm 1), with the gradient norms from the Gram diagonal.

    Weights wᵢ (init 1) are learned: with Gᵢ = wᵢ‖gᵢ‖, Ḡ = mean Gᵢ, L̃ᵢ = Lᵢ/Lᵢ(0),
    rᵢ = L̃ᵢ/mean L̃ and the target Ḡ rᵢ^α held constant, each call takes one step of its own
    optimizer on ∂/∂wᵢ Σ|Gᵢ − Ḡ rᵢ^α| = sign(Gᵢ − Ḡrᵢ^α)‖gᵢ‖, clamps w ≥ 0 and renormalizes
    Σw = k. The call returns the weights before its update. ‖gᵢ‖ is taken on whatever the Gram
    matrix is built from (the paper uses the last shared layer: pass those parameters, or the
    shared features, to ``taskgrad.backward``). State: w, the optimizer state and L(0).
    """


    def __init__(self, alpha: float = 1.5, lr: float = 0.025, optimizer: Literal["sgd", "adam"] = "adam") -> None:
        self.alpha = check_real("GradNorm", "alpha", alpha, low=0.0)
        self.lr = check_real("GradNorm", "lr", lr, low=0.0)
        self.optimizer = check_choice("GradNorm", "optimizer", optimizer, ("sgd", "adam"))
        self._w = LearnedTaskParameter(1.0, lr, optimizer)
        self._initial: Tensor | None = None

    def compute(self, *, gram: Tensor, losses: Tensor) -> Tensor:
        L = losses.detach()
        if self._initial is None:
            check_positive_losses("GradNorm (first call)", L)
            self._initial = L.clone()
        w_param = self._w.get(L)
        with torch.no_grad():
            w = w_param.detach().clone()
            sig = diag_norms(gram).to(w.dtype)
            Gi = w * sig
            Lt = (L / self._initial).to(w.dtype)
            r = Lt / Lt.mean(-1, keepdim=True)
            target = Gi.mean(-1, keepdim=True) * r.pow(self.alpha)
            grad = torch.sign(Gi - target) * sig
        self._w.step(grad)
        with torch.no_grad():
            v = w_param.clamp_min(0.0)
            total = v.sum(-1, keepdim=True)
            k = v.shape[-1]
            v = torch.where(total > 0, k * v / total.clamp_min(torch.finfo(v.dtype).tiny), torch.ones_like(v))
            w_param.copy_(v)
        return w.to(losses.dtype)

    @property
    def weights(self) -> Tensor | None:
        """The weights the next call will return (None before the first call)."""
        return None if self._w.value is None else self._w.value.detach()

    def reset(self) -> None:
        self._w.reset()
        self._initial = None

    def state_dict(self) -> dict[str, Any]:
        return {"w": self._w.state_dict(), "initial": clone_state(self._initial)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._w.load_state_dict(state_dict["w"])
        self._initial = clone_state(state_dict.get("initial"))
