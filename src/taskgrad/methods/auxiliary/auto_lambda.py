"""Auto-λ (Liu et al., TMLR 2022): task weights meta-learned by a one-step look-ahead."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._validate import check_choice, check_real
from ..base import Weighting
from ..registry import register_method
from ._hyper import (
    MetaParameter,
    check_closure_losses,
    jacobian_products,
    lookahead_gradient,
    param_list,
)

__all__ = ["AutoLambda"]


@register_method(
    "auto-lambda",
    description=(
        "Auto-λ: task weights meta-learned to lower the primary validation loss after one "
        "look-ahead step."
    ),
    paper=(
        "Liu, James, Davison & Johns, Auto-Lambda: Disentangling Dynamic Task Relationships, "
        "TMLR 2022"
    ),
    aliases=("AutoLambda", "Auto-λ", "autol"),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=True,
    random=False,
)
class AutoLambda(Weighting):
    """Auto-λ: w = λ, meta-learned; ``method(losses=L)`` returns the current λ.

    Meta step (:meth:`update`, called before the training step, every step in the paper):
    with the training losses Lᵢ(θ) and the primary validation loss V,

        θ' = θ − η (Σᵢ λᵢ∇Lᵢ(θ) + μ·m + δ·θ),       ∂V(θ')/∂λᵢ = −η ⟨∇Lᵢ(θ), ∇V(θ')⟩,

    and λ takes one Adam step (learning rate ``meta_lr``) on that gradient. η is the model's
    learning rate; m, μ and δ are the momentum buffer, momentum and weight decay of the model's
    SGD optimizer when it is passed (as the authors' ``virtual_step``), else 0. The products
    ⟨∇Lᵢ, ∇V(θ')⟩ are exact (two backward passes, ``hessian="exact"``) or the authors'
    central difference (Lᵢ(θ + εv) − Lᵢ(θ − εv))/(2ε) along v = ∇V(θ'), ε = 0.01/‖v‖
    (``hessian="finite-difference"``); either costs about two more forward passes of the
    training batch and one of the validation batch. λ starts at ``init`` for every task (the
    authors' 0.1) and is not constrained. The validation loss is the primary task(s) on
    held-out data (the authors use a second, reshuffled pass over the training set). State: λ
    and Adam's state.

    Use::

        method = AutoLambda()
        for batch, val_batch in loader:
            lr = opt.param_groups[0]["lr"]
            method.update(model.parameters(), lambda: task_losses(model, batch),
                          lambda: primary_loss(model, val_batch), lr=lr, optimizer=opt)
            taskgrad.backward(task_losses(model, batch), method=method)
            opt.step()
    """

    needs = frozenset({"losses"})

    def __init__(self, init: float = 0.1, meta_lr: float = 1e-4, hessian: str = "exact") -> None:
        self.init = check_real("AutoLambda", "init", init)
        self.meta_lr = check_real("AutoLambda", "meta_lr", meta_lr, low=0.0)
        self.hessian = check_choice(
            "AutoLambda", "hessian", hessian, ("exact", "finite-difference")
        )
        self._lam = MetaParameter(
            lambda k: torch.full((k,), float(init)), lambda ps: torch.optim.Adam(ps, lr=meta_lr)
        )

    @property
    def weights(self) -> Tensor | None:
        """The current λ (k,), or None before the first call."""
        return self._lam.current()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        return self._lam.expand_like(losses)

    def update(
        self,
        params: Sequence[Tensor] | torch.nn.Module,
        train_losses: Callable[[], Tensor],
        val_loss: Callable[[], Tensor],
        lr: float,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> Tensor:
        """One meta step on λ; returns the hypergradient ∂V(θ')/∂λ (k,). θ is left unchanged.

        ``train_losses()`` returns the (k,) training losses of the current batch at the
        current parameters, ``val_loss()`` the scalar primary validation loss (it is called
        at θ'), ``lr`` the model's learning rate η.
        """
        ps = param_list(params)
        L = check_closure_losses(train_losses(), None)
        lam = self._lam.ensure(L.shape[0]).detach().to(device=L.device, dtype=L.dtype)
        g_raw = torch.autograd.grad((lam * L).sum(), ps, allow_unused=True)
        g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g_raw, ps, strict=True)]
        step = [lr * gi for gi in g]
        if optimizer is not None:
            group = optimizer.param_groups[0]
            mom, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
            for j, p in enumerate(ps):
                buf = optimizer.state.get(p, {}).get("momentum_buffer") if mom else None
                extra = (mom * buf if buf is not None else 0.0) + wd * p.detach()
                step[j] = step[j] + lr * extra
        v = lookahead_gradient(ps, [s.detach() for s in step], val_loss)
        if self.hessian == "exact":  # θ was changed in place and restored: a fresh graph at θ
            r = jacobian_products(check_closure_losses(train_losses(), L.shape[0]), ps, v)
        else:
            r = self._finite_difference(ps, v, train_losses)
        hyper = -lr * r.to(torch.float64)
        self._lam.step(hyper)
        return hyper

    def _finite_difference(
        self, ps: list[Tensor], v: list[Tensor], train_losses: Callable[[], Tensor]
    ) -> Tensor:
        norm = torch.sqrt(
            sum(((vi.double() ** 2).sum() for vi in v), torch.zeros((), dtype=torch.float64))
        )
        if float(norm) == 0.0:
            return torch.zeros(self._lam.value.shape[0], dtype=torch.float64)  # type: ignore[union-attr]
        eps = 0.01 / norm
        with torch.no_grad():
            saved = [p.detach().clone() for p in ps]
            try:
                for p, vi in zip(ps, v, strict=True):
                    p.add_(eps * vi)
                plus = train_losses().detach().double()
                for p, s, vi in zip(ps, saved, v, strict=True):
                    p.copy_(s - eps * vi)
                minus = train_losses().detach().double()
            finally:
                for p, s in zip(ps, saved, strict=True):
                    p.copy_(s)
        return (plus - minus) / (2.0 * eps)

    def reset(self) -> None:
        self._lam.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": self._lam.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._lam.load_state_dict(state_dict["lambda"])
