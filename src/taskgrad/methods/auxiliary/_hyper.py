"""Hypergradients of a validation loss with respect to task weights, for the meta-learned methods.

The training objective is Σᵢ wᵢ Lᵢ(θ) and the meta objective a validation loss V(θ) (the
primary task on held-out data). Both meta-learned families reduce to the products r = J v of the
task gradients gᵢ = ∇Lᵢ(θ) (rows of J) with one vector v of the parameter space:

* look-ahead (Auto-λ): θ' = θ − η Σ wᵢgᵢ, so ∂V(θ')/∂wᵢ = −η ⟨gᵢ(θ), ∇V(θ')⟩ exactly (θ' is
  linear in w): v = ∇V(θ');
* implicit differentiation (AuxiLearn, AuxiNash): at a minimizer of the training objective,
  ∂V/∂wᵢ = −⟨gᵢ, H⁻¹∇V⟩ with H the Hessian of Σ wᵢLᵢ; H⁻¹ is replaced by the truncated Neumann
  series η Σ_{j≤T} (I − ηH)ʲ (Lorraine et al. 2020), so v = Σ_{j≤T} (I − ηH)ʲ ∇V (the η in front
  is folded into the meta learning rate, as in the authors' code).

J v costs two backward passes whatever k is: with c a dummy (k,) vector, u = Jᵀc is built with a
graph (``create_graph``) and J v = ∂⟨u, v⟩/∂c.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "MetaParameter",
    "check_closure_losses",
    "implicit_products",
    "jacobian_products",
    "lookahead_gradient",
    "neumann_vector",
    "param_list",
    "validation_gradient",
]

Params = Sequence[Tensor]


def param_list(params: Params | torch.nn.Module) -> list[Tensor]:
    """The parameters as a list, from a module or an iterable; at least one that requires grad."""
    ps = list(params.parameters()) if isinstance(params, torch.nn.Module) else list(params)
    ps = [p for p in ps if p.requires_grad]
    if not ps:
        raise ValueError(
            "params has no tensor that requires grad: pass the model's parameters (those the "
            "step updates)."
        )
    return ps


def check_closure_losses(losses: Tensor, k: int | None) -> Tensor:
    """Validate what the ``train_losses`` closure returned: a finite (k,) tensor with a graph."""
    if not isinstance(losses, Tensor) or losses.dim() != 1:
        got = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(f"train_losses() must return the (k,) tensor of task losses, got {got}.")
    if k is not None and losses.shape[0] != k:
        raise ValueError(
            f"train_losses() returned {losses.shape[0]} losses but the method has {k} task weights."
        )
    if not losses.requires_grad:
        raise ValueError(
            "train_losses() returned losses without a graph: compute them from the model, "
            "outside torch.no_grad()."
        )
    if not bool(torch.isfinite(losses.detach()).all()):
        raise ValueError(f"train_losses() returned non-finite losses {losses.detach().tolist()}.")
    return losses


def _grads(out: Tensor, params: list[Tensor], **kw) -> list[Tensor]:
    gs = torch.autograd.grad(out, params, allow_unused=True, **kw)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params, strict=True)]


def jacobian_products(losses: Tensor, params: list[Tensor], v: list[Tensor]) -> Tensor:
    """r = J v: rᵢ = ⟨∇Lᵢ, v⟩ for the (k,) losses (with a graph), by two backward passes."""
    c = torch.ones_like(losses, requires_grad=True)
    u = torch.autograd.grad(losses, params, grad_outputs=c, create_graph=True, allow_unused=True)
    s = sum(
        ((ui * vi).sum() for ui, vi in zip(u, v, strict=True) if ui is not None),
        torch.zeros((), dtype=losses.dtype, device=losses.device),
    )
    if (
        not s.requires_grad
    ):  # no parameter reaches the losses twice-differentiably: J v = 0 or linear in c
        return torch.zeros_like(losses.detach())
    (r,) = torch.autograd.grad(s, c, allow_unused=True)
    return torch.zeros_like(losses.detach()) if r is None else r.detach()


def validation_gradient(params: list[Tensor], val_loss: Callable[[], Tensor]) -> list[Tensor]:
    """∇V at the current parameters, from the ``val_loss`` closure (checked to be a scalar)."""
    v = val_loss()
    if not isinstance(v, Tensor) or v.numel() != 1 or not v.requires_grad:
        raise ValueError(
            "val_loss() must return the scalar validation loss of the primary task(s), "
            "with a graph."
        )
    return _grads(v.reshape(()), params)


def lookahead_gradient(
    params: list[Tensor],
    step: list[Tensor],
    val_loss: Callable[[], Tensor],
) -> list[Tensor]:
    """∇V(θ − step): the validation gradient after a virtual step; θ is restored afterwards.

    The parameters are changed in place, so graphs built before the call cannot be
    back-propagated afterwards: evaluate the training losses again.
    """
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, s in zip(params, step, strict=True):
            p.sub_(s)
    try:
        return validation_gradient(params, val_loss)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def neumann_vector(
    train_objective: Tensor, params: list[Tensor], val_grad: list[Tensor], lr: float, terms: int
) -> list[Tensor]:
    """v = Σ_{j≤T} (I − ηH)ʲ ∇V, H the Hessian of ``train_objective`` (Hessian-vector products)."""
    g = torch.autograd.grad(train_objective, params, create_graph=True, allow_unused=True)
    pairs = [(gi, p) for gi, p in zip(g, params, strict=True)]
    v = [x.detach() for x in val_grad]
    acc = [x.clone() for x in v]
    for _ in range(terms):
        live = [(i, gi) for i, (gi, _) in enumerate(pairs) if gi is not None and gi.requires_grad]
        if not live:
            break
        hv_raw = torch.autograd.grad(
            [gi for _, gi in live],
            params,
            grad_outputs=[v[i] for i, _ in live],
            retain_graph=True,
            allow_unused=True,
        )
        hv = [torch.zeros_like(vi) if h is None else h for vi, h in zip(v, hv_raw, strict=True)]
        v = [vi - lr * h for vi, h in zip(v, hv, strict=True)]
        acc = [a + vi for a, vi in zip(acc, v, strict=True)]
    return acc


def implicit_products(
    params: Params | torch.nn.Module,
    train_losses: Callable[[], Tensor],
    val_loss: Callable[[], Tensor],
    weights: Callable[[Tensor], Tensor],
    lr: float,
    terms: int,
    k: int | None = None,
) -> Tensor:
    """−J v in float64 (k,) with v = Σ_{j≤T}(I − ηH)ʲ∇V and H the Hessian of Σᵢ wᵢLᵢ.

    ``weights(L)`` gives w (k,) for the training losses L (the dtype and device of L); ``k``, when
    given, is the number of losses ``train_losses()`` must return. ∇V is taken first, before
    the training losses' graph is built.
    """
    ps = param_list(params)
    val_grad = validation_gradient(ps, val_loss)
    L = check_closure_losses(train_losses(), k)
    v = neumann_vector((weights(L) * L).sum(), ps, val_grad, lr, terms)
    return -jacobian_products(L, ps, v).to(torch.float64)


class MetaParameter:
    """A (k,) tensor of meta-parameters with its own torch optimizer, created lazily for k tasks.

    ``make_optimizer`` builds the optimizer of the leaf tensor (the authors' choice: Adam for
    Auto-λ, SGD with momentum for AuxiLearn and AuxiNash). ``state_dict()`` holds the values and
    the optimizer's state, so a checkpoint resumes the meta-learning exactly.
    """

    def __init__(
        self,
        init: Callable[[int], Tensor],
        make_optimizer: Callable[[list[Tensor]], torch.optim.Optimizer],
    ) -> None:
        self._init = init
        self._make_optimizer = make_optimizer
        self.value: Tensor | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def ensure(self, k: int) -> Tensor:
        """The values, created for k tasks on first use (an error if they are for another k)."""
        if self.value is None:
            self.value = self._init(k).detach().to(torch.float64).clone().requires_grad_(True)
            self.optimizer = self._make_optimizer([self.value])
        elif self.value.shape[0] != k:
            raise ValueError(
                f"the meta-parameters are for {self.value.shape[0]} tasks, got {k}; call reset()."
            )
        return self.value

    def current(self) -> Tensor | None:
        """A detached copy of the values, or None before they are created."""
        return None if self.value is None else self.value.detach().clone()

    def expand_like(self, losses: Tensor) -> Tensor:
        """The values (created for k = losses.shape[-1] tasks) as weights shaped like ``losses``."""
        w = self.ensure(losses.shape[-1]).detach()
        return w.to(losses.dtype).to(losses.device).expand(losses.shape).clone()

    def step(self, grad: Tensor, max_grad_norm: float | None = None) -> None:
        """One optimizer step with the given gradient (clipped to ``max_grad_norm`` first)."""
        assert self.value is not None and self.optimizer is not None
        g = grad.detach().to(self.value.dtype).to(self.value.device).clone()
        if not bool(torch.isfinite(g).all()):
            raise FloatingPointError(
                f"the meta-gradient is not finite ({g.tolist()}); lower the learning rates."
            )
        if max_grad_norm is not None:
            n = float(g.norm())
            if n > max_grad_norm:
                g = g * (max_grad_norm / n)
        self.optimizer.zero_grad()
        self.value.grad = g
        self.optimizer.step()

    def reset(self) -> None:
        self.value = None
        self.optimizer = None

    def state_dict(self) -> dict:
        if self.value is None:
            return {"value": None, "optimizer": None}
        assert self.optimizer is not None
        return {
            "value": self.value.detach().clone(),
            "optimizer": _clone(self.optimizer.state_dict()),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("value") is None:
            self.reset()
            return
        self.value = None
        self.ensure(int(state["value"].shape[0]))
        assert self.value is not None and self.optimizer is not None
        with torch.no_grad():
            self.value.copy_(state["value"])
        self.optimizer.load_state_dict(_clone(state["optimizer"]))


def _clone(x):
    if isinstance(x, Tensor):
        return x.detach().clone()
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clone(v) for v in x]
    return x
