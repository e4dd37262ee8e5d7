"""Hutchinson's diagonal estimate of a curvature matrix, and Sophia-H, which uses it alone.

diag(A) = E[z ⊙ A z] for z with independent entries of mean 0 and variance 1 (Rademacher ±1:
then the estimate is exact when A is diagonal). AdaHessian (Yao et al. 2021) and Sophia (Liu et
al. 2023) precondition the gradient with an exponential moving average of this estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..methods.base import Weighting
from ..methods.loss.mean import Mean
from ._closure import evaluate, method_weights
from ._flat import flatten, unflatten
from .products import HessianOperator, weighted_objective

__all__ = ["HutchinsonDiagonal", "SophiaH", "hutchinson_diagonal"]


def hutchinson_diagonal(
    matmat: Callable[[Tensor], Tensor],
    numel: int,
    *,
    n_samples: int = 1,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """diag(A) ≈ (1/n) Σₛ zₛ ⊙ A zₛ over n Rademacher probes zₛ ∈ {±1}^P (unbiased).

    ``matmat`` maps probes Z (m, P) to A Z rows (m, P) (e.g. ``CurvatureOperator.mm``); the n
    probes go in batches of ``batch_size`` (default: all at once).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be ≥ 1, got {n_samples}.")
    bs = n_samples if batch_size is None else batch_size
    if bs < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
    total = torch.zeros(numel, dtype=dtype, device=device)
    done = 0
    while done < n_samples:
        m = min(bs, n_samples - done)
        z = torch.randint(
            0,
            2,
            (m, numel),
            generator=generator,
            device=device if generator is None else generator.device,
        )
        z = (2 * z - 1).to(dtype=dtype, device=device)
        Az = matmat(z)
        total += (z * Az).sum(0)
        done += m
    return total / n_samples


class HutchinsonDiagonal:
    """Exponential moving average h ← β h + (1 − β) ĥ of Hutchinson estimates ĥ (bias-corrected
    by 1 − βᵗ when ``bias_correction``), as the diagonal preconditioner of AdaHessian / Sophia.
    """

    def __init__(self, beta: float = 0.99, bias_correction: bool = True) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}.")
        self.beta = beta
        self.bias_correction = bias_correction
        self.ema: Tensor | None = None
        self.count = 0

    def update(self, estimate: Tensor) -> Tensor:
        """Fold in one estimate ĥ (P,) and return the current diagonal."""
        if not bool(torch.isfinite(estimate).all()):
            raise FloatingPointError(
                "the Hutchinson estimate is not finite (a Hessian-vector product overflowed or is "
                "NaN); "
                "it was not folded in."
            )
        if self.ema is None:
            self.ema = torch.zeros_like(estimate)
        elif self.ema.shape != estimate.shape:
            raise ValueError(
                f"estimate has shape {tuple(estimate.shape)}, the average {tuple(self.ema.shape)}."
            )
        self.ema.mul_(self.beta).add_(estimate, alpha=1 - self.beta)
        self.count += 1
        return self.value()

    def value(self) -> Tensor:
        """The current (bias-corrected) diagonal; raises before the first update."""
        if self.ema is None:
            raise RuntimeError("no estimate yet: call update() first.")
        if self.bias_correction:
            return self.ema / (1 - self.beta**self.count)
        return self.ema.clone()

    def state_dict(self) -> dict[str, Any]:
        ema = None if self.ema is None else self.ema.clone()
        return {
            "beta": self.beta,
            "bias_correction": self.bias_correction,
            "ema": ema,
            "count": self.count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.beta = float(state["beta"])
        self.bias_correction = bool(state["bias_correction"])
        self.ema = None if state["ema"] is None else state["ema"].clone()
        self.count = int(state["count"])


class SophiaH(torch.optim.Optimizer):
    """Sophia with Hutchinson curvature (Liu et al. 2023, Alg. 1 with the Hutchinson estimator),
    on the weighted objective f = Σ wᵢLᵢ with w from a taskgrad method.

        m ← β₁m + (1 − β₁)∇f;   every ``update_every`` steps h ← β₂h + (1 − β₂) z⊙(∇²f z);
        θ ← θ − lr·(weight_decay·θ + clip(m / max(γ·h, ε), ±clip)).

    ``step(closure)``: the closure returns the task losses ((k,) tensor or list of scalars) with
    the graph (no backward); the method's weights come from the Gram over these parameters.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        method: Weighting | None = None,
        *,
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.965, 0.99),
        gamma: float = 0.01,
        eps: float = 1e-12,
        clip: float = 1.0,
        weight_decay: float = 0.0,
        update_every: int = 10,
        n_samples: int = 1,
        seed: int = 0,
    ) -> None:
        if lr <= 0 or gamma <= 0 or eps <= 0 or clip <= 0 or update_every < 1 or n_samples < 1:
            raise ValueError("lr, gamma, eps, clip must be > 0 and update_every, n_samples ≥ 1.")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}.")
        super().__init__(
            params,
            dict(lr=lr, betas=betas, gamma=gamma, eps=eps, clip=clip, weight_decay=weight_decay),
        )
        if len(self.param_groups) != 1:
            raise ValueError(
                "SophiaH takes one parameter group (the diagonal is over all parameters)."
            )
        self.method = Mean() if method is None else method
        self.update_every = update_every
        self.n_samples = n_samples
        self._gen = torch.Generator().manual_seed(seed)
        self._params = list(self.param_groups[0]["params"])
        self.info: dict[str, Any] = {}

    def step(self, closure: Callable[[], Any] | None = None) -> Tensor:  # type: ignore[override]
        """One Sophia step; returns the task losses (detached) at the start of the step."""
        if closure is None:
            raise ValueError("SophiaH needs a closure that returns the task losses.")
        group = self.param_groups[0]
        params = self._params
        with torch.enable_grad():
            L, extra = evaluate(closure)
            w = method_weights(self.method, L, extra, params)
            state = self.state[params[0]]
            t = state.get("step", 0)
            refresh = t % self.update_every == 0
            if refresh:
                op = HessianOperator.from_graph(L, params, w)
                g = op.grad
                est = hutchinson_diagonal(
                    op.mm,
                    op.numel,
                    n_samples=self.n_samples,
                    dtype=g.dtype,
                    device=g.device,
                    generator=self._gen,
                )
            else:
                f = weighted_objective(L, w)
                g = flatten(torch.autograd.grad(f, params, allow_unused=True), like=params)
        if not bool(torch.isfinite(g).all()):
            raise FloatingPointError(
                "the gradient of the weighted objective is not finite; the step was not taken."
            )
        b1, b2 = group["betas"]
        m = state.get("exp_avg", torch.zeros_like(g))
        h = state.get("hessian", torch.zeros_like(g))
        m = b1 * m + (1 - b1) * g
        if refresh:
            if not bool(torch.isfinite(est).all()):
                raise FloatingPointError(
                    "the Hutchinson estimate is not finite; the step was not taken."
                )
            h = b2 * h + (1 - b2) * est
        ratio = (m / torch.clamp(group["gamma"] * h, min=group["eps"])).clamp(
            -group["clip"], group["clip"]
        )
        with torch.no_grad():
            flat = flatten([p.detach() for p in params])
            new = flat - group["lr"] * (group["weight_decay"] * flat + ratio)
            for p, v in zip(params, unflatten(new, params), strict=True):
                p.copy_(v)
        state.update(step=t + 1, exp_avg=m, hessian=h)
        self.info = {
            "losses": L.detach(),
            "weights": w.detach(),
            "hessian_refreshed": refresh,
            "clipped_fraction": float((ratio.abs() >= group["clip"]).float().mean()),
        }
        return L.detach()

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["taskgrad"] = {"method": self.method.state_dict(), "generator": self._gen.get_state()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("taskgrad", None)
        super().load_state_dict(sd)
        if extra is not None:
            self.method.load_state_dict(extra["method"])
            self._gen.set_state(extra["generator"])
