"""FAMO: fast adaptive multitask optimization from loss decreases.

Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._common import (
    LearnedTaskParameter,
    clone_state,
)
from .._validate import check_bool, check_real, check_vector
from ..base import Weighting
from ..gram._zoo_checks import check_max_norm
from ..registry import register_method

__all__ = ["FAMO"]


@register_method(
    "famo",
    description="FAMO: fast adaptive multitask optimization from loss decreases.",
    paper="Liu et al., FAMO: Fast Adaptive Multitask Optimization, NeurIPS 2023",
    aliases=("FAMO",),
    defined="positive-losses",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class FAMO(Weighting):
    """FAMO (Liu et al., 2023): fast adaptive multitask optimization from the losses alone.

    Logits ξ (init 0), z = softmax(ξ): the update is the gradient of c Σ zᵢ log(Lᵢ − bᵢ + ε)
    with c = (Σ zⱼ/(Lⱼ − bⱼ + ε))⁻¹ held constant, i.e. w = c z/(L − b + ε) (Σ-convex combination
    of the gradients of log-losses). ξ is learned by its own Adam (lr, weight_decay): with
    δ = log(L_before − b + ε) − log(L_after − b + ε), one step on the gradient (∂z/∂ξ)ᵀδ.

    "After" losses: the paper recomputes the losses on the same batch after the model step and
    calls :meth:`update` with them. Without that extra forward, the next call's losses stand
    in (``update_on_next_call=True``, the single-forward variant): the update then happens at
    the start of the next call, unless :meth:`update` was called in between.

    ``max_norm`` (None: off) is the reference code's clipping of the shared-parameter gradient
    to that norm; the training step applies it (it is the step's default ``max_norm``).
    """

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Tensor | None = None,
        eps: float = 1e-8,
        update_on_next_call: bool = True,
        max_norm: float | None = None,
    ) -> None:
        self.max_norm = check_max_norm(max_norm)
        self.lr = check_real("FAMO", "lr", lr, low=0.0)
        self.weight_decay = check_real("FAMO", "weight_decay", weight_decay, low=0.0)
        self.min_losses = check_vector("FAMO", "min_losses", min_losses)
        self.eps = check_real("FAMO", "eps", eps, low=0.0)
        self.update_on_next_call = check_bool("FAMO", "update_on_next_call", update_on_next_call)
        self._xi = LearnedTaskParameter(0.0, lr, "adam", weight_decay)
        self._prev: Tensor | None = None

    def _shift(self, L: Tensor) -> Tensor:
        b = 0.0 if self.min_losses is None else self.min_losses.to(dtype=L.dtype, device=L.device)
        shifted = L - b + self.eps
        if bool((shifted <= 0).any()):
            raise ValueError(
                "FAMO needs every loss above its lower bound min_losses (it takes log(L − b))."
            )
        return shifted

    def update(self, new_losses: Tensor) -> None:
        """One Adam step on the logits from the losses recomputed after the model step."""
        if self._prev is None:
            raise ValueError(
                "FAMO.update must follow a call that computed weights (there is no 'before' loss)."
            )
        xi = self._xi.get(self._prev)
        with torch.no_grad():
            delta = torch.log(self._shift(self._prev.to(xi.dtype))) - torch.log(
                self._shift(new_losses.detach().to(xi.dtype))
            )
            z = torch.softmax(xi, dim=-1)
            grad = z * (delta - (z * delta).sum(-1, keepdim=True))
        self._xi.step(grad)
        self._prev = None

    def compute(self, *, losses: Tensor) -> Tensor:
        L = losses.detach()
        if self.update_on_next_call and self._prev is not None:
            self.update(L)
        xi = self._xi.get(L)
        with torch.no_grad():
            z = torch.softmax(xi.detach(), dim=-1).to(L.dtype)
            inv = 1.0 / self._shift(L)
            w = z * inv / (z * inv).sum(-1, keepdim=True)
        self._prev = L.clone()
        return w

    def reset(self) -> None:
        self._xi.reset()
        self._prev = None

    def state_dict(self) -> dict[str, Any]:
        return {"xi": self._xi.state_dict(), "prev": clone_state(self._prev)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._xi.load_state_dict(state_dict["xi"])
        self._prev = clone_state(state_dict.get("prev"))
