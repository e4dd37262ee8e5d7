"""`CoefficientFreeDecay`: wrap any torch optimizer (SGD, Adam, AdamW, …) so that no step increases
the weight norm to first order, with no decay coefficient to tune.

Where the projection is applied (``where``):

* ``"update"`` (default): on the optimizer's actual step Δ = θₜ₊₁ − θₜ, after the inner
  optimizer has run. For Adam/AdamW this is after the bias-corrected ratio m̂/(√v̂ + ε) and after
  AdamW's own decoupled decay (if any): Δ ← Δ − relu(⟨Δ, a⟩)/‖a‖² · a with a = θₜ (L2) or
  sign(θₜ) (L1), so ⟨Δ, a⟩ ≤ 0. This is the only place where the guarantee holds for Adam:
  Δ is the direction θ really moves in, so ⟨Δ, a⟩ ≤ 0 means R(θ) = ½‖θ‖² (or ‖θ‖₁) does not grow
  to first order. Adam's moments m and v keep seeing the raw gradient g, as AdamW keeps the decay
  out of the moments (the constraint term is not a data gradient and would distort v).
  For plain SGD (no momentum, no weight decay) Δ = −ηg and this is exactly u = g + λa.
* ``"gradient"``: project ``p.grad`` (g → u = g + λa) before the inner step. Exact for plain
  SGD; for momentum SGD or Adam the guarantee is lost, because the momentum buffer and the
  per-coordinate preconditioner 1/(√v̂ + ε) change the direction after the projection (the
  same reason L2-in-the-gradient is not weight decay in Adam). Provided for comparison.

Scope (``scope``): ``"global"`` (one λ for all parameters), ``"group"`` (one λ per parameter
group of the inner optimizer) or ``"tensor"`` (one λ per parameter tensor). A parameter group with
``coefficient_free=False`` (e.g. the biases) is left alone.

Only the first-order guarantee holds: ‖θ + Δ‖² = ‖θ‖² + 2⟨Δ, θ⟩ + ‖Δ‖², so when the constraint is
active the norm still grows by ‖Δ‖² per step (second order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from .projection import (
    Norm,
    _check_norm,
    aux_gradient,
    coefficient_free_direction,
    decay_coefficient,
)

__all__ = ["CoefficientFreeDecay"]

Scope = Literal["global", "group", "tensor"]
Where = Literal["update", "gradient"]


class CoefficientFreeDecay:
    """Optimizer wrapper: inner step, then the coefficient-free projection of the step.

    Example::

        opt = CoefficientFreeDecay(torch.optim.Adam(model.parameters(), lr=1e-3), norm="l2")
        loss.backward(); opt.step(); opt.zero_grad()

    Attributes after each step: ``last_lambda`` ((n_units,) float64 λ of the last step, in units
    of the step for ``where="update"``: Δ' = Δ − λ·a) and ``n_active`` (steps where some λ > 0).
    Learning-rate schedulers attach to the inner optimizer (``wrapper.optimizer``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        norm: Norm = "l2",
        scope: Scope = "global",
        where: Where = "update",
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}."
            )
        _check_norm(norm)
        if scope not in ("global", "group", "tensor"):
            raise ValueError(f"scope must be 'global', 'group' or 'tensor', got {scope!r}.")
        if where not in ("update", "gradient"):
            raise ValueError(
                f"where must be 'update' (after the inner step) or 'gradient', got {where!r}."
            )
        self.optimizer = optimizer
        self.norm = norm
        self.scope = scope
        self.where = where
        self.n_steps = 0
        self.n_active = 0
        self.last_lambda: Tensor | None = None

    # delegation -----------------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    # the step --------------------------------------------------------------------------------
    def _units(self) -> tuple[list[Tensor], list[list[int]]]:
        params: list[Tensor] = []
        units: list[list[int]] = []
        for group in self.optimizer.param_groups:
            if not group.get("coefficient_free", True):
                continue
            idx = []
            for p in group["params"]:
                if p.requires_grad:
                    idx.append(len(params))
                    params.append(p)
            if self.scope == "group" and idx:
                units.append(idx)
            elif self.scope == "tensor":
                units.extend([i] for i in idx)
        if self.scope == "global" and params:
            units = [list(range(len(params)))]
        return params, units

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run the inner optimizer's step, projected so that no unit's R(θ) grows to first order."""
        params, units = self._units()
        if not params:
            return self.optimizer.step(closure)
        if self.where == "gradient":
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
                closure = None
            else:
                loss = None
            grads = [p.grad for p in params]
            u, lam = coefficient_free_direction(grads, params, self.norm, units)
            for p, g in zip(params, u, strict=True):
                if g is not None:
                    p.grad = g
            inner = self.optimizer.step()
            loss = inner if loss is None else loss
        else:
            old = [p.detach().clone() for p in params]
            loss = self.optimizer.step(closure)
            auxs = [aux_gradient(o, self.norm) for o in old]
            deltas = [p.detach() - o for p, o in zip(params, old, strict=True)]
            dots, sqs = [], []
            for unit in units:
                dots.append(
                    sum(
                        ((deltas[i].double() * auxs[i].double()).sum() for i in unit),
                        torch.zeros((), dtype=torch.float64, device=old[0].device),
                    )
                )
                sqs.append(
                    sum(
                        ((auxs[i].double() ** 2).sum() for i in unit),
                        torch.zeros((), dtype=torch.float64, device=old[0].device),
                    )
                )
            # Δ plays the role of −ηg: λ = relu(⟨Δ, a⟩)/‖a‖² and Δ' = Δ − λa.
            lam = decay_coefficient(-torch.stack(dots), torch.stack(sqs))
            for j, unit in enumerate(units):
                if float(lam[j]) == 0.0:
                    continue
                for i in unit:
                    params[i].sub_((lam[j] * auxs[i].double()).to(params[i].dtype))
        self.n_steps += 1
        self.n_active += int(bool((lam > 0).any()))
        self.last_lambda = lam
        return loss

    # checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state plus the wrapper's configuration and counters."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "norm": self.norm,
            "scope": self.scope,
            "where": self.where,
            "n_steps": self.n_steps,
            "n_active": self.n_active,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the configuration must match this wrapper's."""
        missing = {"optimizer", "norm", "scope", "where", "n_steps", "n_active"} - set(state_dict)
        if missing:
            raise ValueError(
                f"state_dict is missing {sorted(missing)}; was it saved by CoefficientFreeDecay?"
            )
        for key in ("norm", "scope", "where"):
            if state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"state_dict was saved with {key}={state_dict[key]!r} but this wrapper has "
                    f"{key}={getattr(self, key)!r}; build the wrapper with the same settings."
                )
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.n_steps = int(state_dict["n_steps"])
        self.n_active = int(state_dict["n_active"])

    def __repr__(self) -> str:
        return (
            f"CoefficientFreeDecay({type(self.optimizer).__name__}, norm={self.norm!r}, "
            f"scope={self.scope!r}, where={self.where!r})"
        )
