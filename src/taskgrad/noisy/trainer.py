"""Learning from a large noisy set with a small clean set: one training step per strategy.

Notation: ℓᵢ(θ) the per-example loss, L_N the mean loss of a noisy batch, L_C1..L_Cm the mean
losses of m clean batches, g_N and g_Cj their gradients. Strategies (``strategy``):

* ``"primary_aux"``: u = g_N + Σ λⱼ g_Cj with λ ≥ 0 the primary/auxiliary projection, so
  ⟨u, g_Cj⟩ ≥ 0 for every clean batch: a step θ − ηu raises no clean loss to first order
  (several clean batches are several constraints). ``margin`` > 0 gives the robust version.
* ``"noisy"``: g_N.   ``"clean"``: the gradient of mean_j L_Cj.
* ``"sum"``: the gradient of L_N + mean_j L_Cj (the summed loss, clean data weighted as one task).
* ``"glmask"``: Gradient-guided Loss Masking (Wang, Bapna, Johnson & Firat 2021, arXiv
  2102.13549): with the clean gradient g_C of mean_j L_Cj, keep example i of the noisy batch iff
  its gradient is aligned with it, mᵢ = 1[⟨∇ℓᵢ, g_C⟩ > 0], and step on (1/n) Σ mᵢℓᵢ.
  The alignments ⟨∇ℓᵢ, g_C⟩ are computed exactly for all parameters and all examples at once as
  one forward-mode JVP of the per-example losses along g_C (no per-example gradients).
  Choices of ours, not taken from the paper's text (only its abstract-level description of the
  algorithm was available here): the alignment uses all parameters, g_C comes from the clean
  batches of the same step, and the masked sum is divided by the full batch size n.

"Fine-tune on clean after noisy" is a schedule of two strategies ("noisy", then "clean"):
switch ``trainer.strategy`` between phases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..methods.auxiliary.primary_aux import PrimaryAux

__all__ = ["STRATEGIES", "CleanSetTrainer", "StepResult", "glmask_alignment"]

STRATEGIES = ("primary_aux", "noisy", "clean", "sum", "glmask")
Batch = tuple[Tensor, Tensor]
PerExampleLoss = Callable[[Tensor, Tensor], Tensor]


class OptimizerLike(Protocol):
    """What the trainer uses of an optimizer: ``zero_grad(set_to_none=True)`` and ``step()``."""

    def zero_grad(self, set_to_none: bool = ...) -> None: ...

    def step(self) -> Any: ...


@dataclass
class StepResult:
    """What one step did: the noisy loss, the clean losses (m,), the weights of the losses
    (primary_aux: (1 + m,) with w₀ = 1; None otherwise) and, for glmask, the kept fraction.
    """

    noisy_loss: float
    clean_losses: list[float]
    weights: Tensor | None = None
    kept_fraction: float | None = None


def _mean_loss(model: nn.Module, loss_fn: PerExampleLoss, batch: Batch) -> Tensor:
    x, y = batch
    per = loss_fn(model(x), y)
    if per.dim() != 1 or per.shape[0] != x.shape[0]:
        raise ValueError(
            f"loss_fn must return one loss per example, shape ({x.shape[0]},), got "
            f"{tuple(per.shape)}; "
            "use reduction='none'."
        )
    return per.mean()


def glmask_alignment(
    model: nn.Module, loss_fn: PerExampleLoss, batch: Batch, direction: dict[str, Tensor]
) -> Tensor:
    """sᵢ = ⟨∇_θ ℓᵢ(θ), d⟩ for every example of ``batch``: one JVP of the per-example losses.

    ``direction`` maps parameter names (as in ``model.named_parameters()``) to tensors d.
    """
    from torch.func import functional_call, jvp

    x, y = batch
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n in names if n not in direction]
    if missing:
        raise ValueError(
            f"direction has no entry for parameters {missing[:3]}…; pass one per trainable "
            "parameter."
        )
    primals = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    tangents = {n: direction[n].detach().to(primals[n].dtype) for n in names}

    def per_example(pdict: dict[str, Tensor]) -> Tensor:
        return loss_fn(functional_call(model, pdict, (x,)), y)

    s = jvp(per_example, (primals,), (tangents,))[1]
    return s.detach()


class CleanSetTrainer:
    """One optimizer step from a noisy batch and one or several clean batches.

    Args:
        model: the network. optimizer: any torch optimizer over its parameters.
        strategy: one of :data:`STRATEGIES`.
        loss_fn: per-example loss ``loss_fn(output, target) -> (n,)`` (default cross-entropy).
        margin: robust margin of the primary_aux constraints (see :class:`~taskgrad.PrimaryAux`).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | OptimizerLike,
        strategy: str = "primary_aux",
        loss_fn: PerExampleLoss | None = None,
        margin: float = 0.0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}.")
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.loss_fn = loss_fn or partial(F.cross_entropy, reduction="none")
        self.method = PrimaryAux(margin=margin)

    def _params(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def step(self, noisy: Batch, clean: Sequence[Batch] | Batch | None = None) -> StepResult:
        """Zero the gradients, fill them according to the strategy, and step the optimizer."""
        if (
            clean is not None
            and isinstance(clean, tuple)
            and len(clean) == 2
            and isinstance(clean[0], Tensor)
        ):
            clean = [clean]  # a single (x, y) batch
        clean = list(clean or [])
        if self.strategy != "noisy" and not clean:
            raise ValueError(f"strategy {self.strategy!r} needs at least one clean batch.")
        self.optimizer.zero_grad(set_to_none=True)
        res = getattr(self, f"_{self.strategy}")(noisy, clean)
        self.optimizer.step()
        return res

    # strategies ----------------------------------------------------------------------------
    def _noisy(self, noisy: Batch, clean: list[Batch]) -> StepResult:
        ln = _mean_loss(self.model, self.loss_fn, noisy)
        ln.backward()
        return StepResult(float(ln.detach()), [])

    def _clean(self, noisy: Batch, clean: list[Batch]) -> StepResult:
        lcs = [_mean_loss(self.model, self.loss_fn, b) for b in clean]
        torch.stack(lcs).mean().backward()
        return StepResult(float("nan"), [float(v.detach()) for v in lcs])

    def _sum(self, noisy: Batch, clean: list[Batch]) -> StepResult:
        ln = _mean_loss(self.model, self.loss_fn, noisy)
        lcs = [_mean_loss(self.model, self.loss_fn, b) for b in clean]
        (ln + torch.stack(lcs).mean()).backward()
        return StepResult(float(ln.detach()), [float(v.detach()) for v in lcs])

    def _primary_aux(self, noisy: Batch, clean: list[Batch]) -> StepResult:
        # The k = 1 + m gradients are formed explicitly (k backward passes; for the small k of
        # this problem cheaper on the CPU than the batched VJPs of taskgrad.backward), then
        # G = J Jᵀ, w = PrimaryAux(G) and .grad = Jᵀw: the same update as
        # taskgrad.backward([L_N, *L_C], method=PrimaryAux()).
        params = self._params()
        ln = _mean_loss(self.model, self.loss_fn, noisy)
        lcs = [_mean_loss(self.model, self.loss_fn, b) for b in clean]
        losses = [ln, *lcs]
        rows = []
        for i, loss in enumerate(losses):
            gs = torch.autograd.grad(
                loss, params, retain_graph=i < len(losses) - 1, allow_unused=True
            )
            rows.append(
                [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs, strict=True)]
            )
        J = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
        Jd = J.double() if J.device.type == "cpu" else J
        G = Jd @ Jd.T
        G = 0.5 * (G + G.T)
        if not bool(torch.isfinite(G).all()):
            raise FloatingPointError(
                "the Gram matrix of the noisy and clean gradients is not finite; lower the "
                "learning rate."
            )
        w = self.method(gram=G).detach()
        u = w.to(J.dtype) @ J
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = u[offset : offset + n].view_as(p).clone()
            offset += n
        return StepResult(float(ln.detach()), [float(v.detach()) for v in lcs], weights=w)

    def _glmask(self, noisy: Batch, clean: list[Batch]) -> StepResult:
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        lc = torch.stack([_mean_loss(self.model, self.loss_fn, b) for b in clean]).mean()
        gc = torch.autograd.grad(lc, [p for _, p in named], allow_unused=True)
        direction = {
            n: (torch.zeros_like(p) if g is None else g)
            for (n, p), g in zip(named, gc, strict=True)
        }
        s = glmask_alignment(self.model, self.loss_fn, noisy, direction)
        mask = (s > 0).to(s.dtype)
        x, y = noisy
        per = self.loss_fn(self.model(x), y)
        (mask * per).sum().div(per.shape[0]).backward()
        return StepResult(
            float(per.detach().mean()), [float(lc.detach())], kept_fraction=float(mask.mean())
        )
