"""AuxiLearn (Navon et al., ICLR 2021), linear auxiliary network, by implicit differentiation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validate import check_int, check_real
from ..base import Weighting
from ..registry import register_method
from ._hyper import MetaParameter, implicit_products

__all__ = ["AuxiLearn"]


@register_method(
    "auxilearn",
    description=(
        "AuxiLearn (linear): non-negative task weights learned by implicit differentiation of "
        "the primary validation loss."
    ),
    paper=(
        "Navon, Achituve, Maron, Chechik & Fetaya, Auxiliary Learning by Implicit "
        "Differentiation, ICLR 2021"
    ),
    aliases=("AuxiLearn", "auxi-learn"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class AuxiLearn(Weighting):
    """AuxiLearn with the linear (monotone) auxiliary network: w = φ ≥ 0, meta-learned.

    The training objective is Σᵢ φᵢLᵢ(θ). At a minimizer θ*(φ), the implicit function theorem
    gives the hypergradient of the primary validation loss V:

        ∂V/∂φᵢ = −⟨∇Lᵢ, H⁻¹∇V⟩,   H = ∇²Σⱼφⱼ Lⱼ,

    with H⁻¹ replaced by the truncated Neumann series Σ_{j≤T} (I − ηH)ʲ (T = ``terms``,
    η = ``hpo_lr``; the authors' ``Hypergrad`` with truncate_iter = 3, learning_rate = 1e-4).
    :meth:`update` applies one SGD step (momentum 0.9, weight decay 5e-4, learning rate
    ``meta_lr``) on that gradient clipped to norm ``max_grad_norm`` and clamps φ at 0 (the
    monotone network), as the authors' ``MetaOptimizer``; they call it every 25 training steps.

    Fit with the step API: the linear network is a task weighting, so ``method(losses=L)``
    returns φ and any taskgrad step applies it; the meta step needs the parameters and two
    closures, like :class:`AutoLambda`. The non-linear auxiliary networks of the paper (an MLP
    or CNN of per-example losses) map per-example losses to a loss and are not a weighting of
    the k task losses, so they do not fit ``w = method(...)`` and are not provided.
    The authors' linear network uses weight normalization (φ = g·v/‖v‖); here φ is the
    parameter itself, which changes the meta-optimizer's geometry, not the hypergradient in φ.
    """

    needs = frozenset({"losses"})

    def __init__(
        self,
        init: float = 1.0,
        meta_lr: float = 5e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        hpo_lr: float = 1e-4,
        terms: int = 3,
        max_grad_norm: float | None = 25.0,
    ) -> None:
        self.init = check_real("AuxiLearn", "init (the weights are non-negative)", init, low=0.0)
        self.meta_lr = check_real("AuxiLearn", "meta_lr", meta_lr, low=0.0)
        self.momentum = check_real(
            "AuxiLearn", "momentum", momentum, low=0.0, high=1.0, high_open=True
        )
        self.weight_decay = check_real("AuxiLearn", "weight_decay", weight_decay, low=0.0)
        self.hpo_lr = check_real("AuxiLearn", "hpo_lr", hpo_lr, low=0.0)
        self.terms = check_int("AuxiLearn", "terms", terms, low=0)
        self.max_grad_norm = (
            None
            if max_grad_norm is None
            else check_real("AuxiLearn", "max_grad_norm", max_grad_norm, low=0.0, low_open=True)
        )
        self._phi = MetaParameter(
            lambda k: torch.full((k,), float(init)),
            lambda ps: torch.optim.SGD(
                ps, lr=meta_lr, momentum=momentum, weight_decay=weight_decay
            ),
        )

    @property
    def weights(self) -> Tensor | None:
        """The current φ (k,), or None before the first call."""
        return self._phi.current()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        return self._phi.expand_like(losses)

    def hypergradient(
        self,
        params: Sequence[Tensor] | torch.nn.Module,
        train_losses: Callable[[], Tensor],
        val_loss: Callable[[], Tensor],
    ) -> Tensor:
        """−J v with v = Σ_{j≤T}(I − ηH)ʲ∇V: the (k,) approximate ∂V/∂φ at the current θ."""

        def phi(L: Tensor) -> Tensor:
            return self._phi.ensure(L.shape[0]).detach().to(device=L.device, dtype=L.dtype)

        return implicit_products(params, train_losses, val_loss, phi, self.hpo_lr, self.terms)

    def update(
        self,
        params: Sequence[Tensor] | torch.nn.Module,
        train_losses: Callable[[], Tensor],
        val_loss: Callable[[], Tensor],
    ) -> Tensor:
        """One meta step on φ (then φ ← max(φ, 0)); returns the hypergradient used."""
        hyper = self.hypergradient(params, train_losses, val_loss)
        self._phi.step(hyper, self.max_grad_norm)
        with torch.no_grad():
            assert self._phi.value is not None
            self._phi.value.clamp_(min=0.0)
        return hyper

    def reset(self) -> None:
        self._phi.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"phi": self._phi.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._phi.load_state_dict(state_dict["phi"])
