"""GradNorm: learned weights balancing gradient norms and training rates.

Chen et al., GradNorm, ICML 2018.
"""

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
from .._validate import check_choice, check_int, check_real
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

    ``parametrization="softmax"`` is LibMTL's: w = k·softmax(ξ) with learned logits ξ (init 1,
    so w = 1), the same loss Σ|Gᵢ − Ḡrᵢ^α| differentiated through the softmax (no clamping or
    renormalization needed). ``warmup_steps`` = n > 0 returns w = 1 (the plain sum) for the
    first n calls and takes L(0) as their mean loss (LibMTL: the first epoch, n = steps per
    epoch); 0 takes L(0) from the first call.
    """

    def __init__(
        self,
        alpha: float = 1.5,
        lr: float = 0.025,
        optimizer: Literal["sgd", "adam"] = "adam",
        parametrization: Literal["paper", "softmax"] = "paper",
        warmup_steps: int = 0,
    ) -> None:
        self.alpha = check_real("GradNorm", "alpha", alpha, low=0.0)
        self.lr = check_real("GradNorm", "lr", lr, low=0.0)
        self.optimizer = check_choice("GradNorm", "optimizer", optimizer, ("sgd", "adam"))
        self.parametrization = check_choice(
            "GradNorm", "parametrization", parametrization, ("paper", "softmax")
        )
        self.warmup_steps = check_int("GradNorm", "warmup_steps", warmup_steps, low=0)
        self._w = LearnedTaskParameter(1.0, lr, optimizer)
        self._initial: Tensor | None = None
        self._warm_sum: Tensor | None = None
        self._warm_n = 0

    def compute(self, *, gram: Tensor, losses: Tensor) -> Tensor:
        L = losses.detach()
        if self._initial is None:
            check_positive_losses("GradNorm (first call)", L)
            if self._warm_n < self.warmup_steps:  # the plain sum while L(0) is averaged
                self._warm_sum = L.clone() if self._warm_sum is None else self._warm_sum + L
                self._warm_n += 1
                return torch.ones_like(losses)
            self._initial = L.clone() if self._warm_sum is None else self._warm_sum / self._warm_n
        if self.parametrization == "softmax":
            return self._softmax_step(gram, L).to(losses.dtype)
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
            v = torch.where(
                total > 0, k * v / total.clamp_min(torch.finfo(v.dtype).tiny), torch.ones_like(v)
            )
            w_param.copy_(v)
        return w.to(losses.dtype)

    def _softmax_step(self, gram: Tensor, L: Tensor) -> Tensor:
        """Weights k·softmax(ξ) before the step; one optimizer step on ξ through the softmax."""
        assert self._initial is not None
        xi = self._w.get(L)
        with torch.no_grad():
            k = L.shape[-1]
            s = torch.softmax(xi.detach(), dim=-1)
            w = k * s
            sig = diag_norms(gram).to(w.dtype)
            Gi = w * sig
            Lt = (L / self._initial).to(w.dtype)
            r = Lt / Lt.mean(-1, keepdim=True)
            target = Gi.mean(-1, keepdim=True) * r.pow(self.alpha)
            a = torch.sign(Gi - target) * sig  # ∂loss/∂wᵢ
            grad = k * s * (a - (s * a).sum(-1, keepdim=True))  # chain rule through k·softmax
        self._w.step(grad)
        return w

    @property
    def weights(self) -> Tensor | None:
        """The weights the next call will return (None before the first call)."""
        if self._w.value is None:
            return None
        v = self._w.value.detach()
        return v.shape[-1] * torch.softmax(v, dim=-1) if self.parametrization == "softmax" else v

    def reset(self) -> None:
        self._w.reset()
        self._initial = None
        self._warm_sum = None
        self._warm_n = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "w": self._w.state_dict(),
            "initial": clone_state(self._initial),
            "warm_sum": clone_state(self._warm_sum),
            "warm_n": self._warm_n,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._w.load_state_dict(state_dict["w"])
        self._initial = clone_state(state_dict.get("initial"))
        self._warm_sum = clone_state(state_dict.get("warm_sum"))
        self._warm_n = int(state_dict.get("warm_n", 0))
