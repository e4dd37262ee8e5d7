"""Smooth Tchebycheff scalarization: smooth max of weighted losses.

Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .._common import check_positive_losses, clone_state
from .._validate import check_choice, check_int, check_real, check_vector
from ..base import Weighting
from ..registry import register_method

__all__ = ["STCH"]


@register_method(
    "stch",
    description="Smooth Tchebycheff scalarization: smooth max of weighted losses.",
    paper=(
        "Lin et al., Smooth Tchebycheff Scalarization for Multi-Objective Optimization, ICML 2024"
    ),
    aliases=("STCH",),
    defined="everywhere",
    non_conflicting=False,
    permutation_equivariant=True,
    scale_invariant=False,
    stateful=False,
    random=False,
)
class STCH(Weighting):
    """Smooth Tchebycheff scalarization (Lin et al., 2024): S = μ log Σ exp(λᵢ(Lᵢ − zᵢ)/μ).

    w = λ ⊙ softmax(λ ⊙ (L − z)/μ): a smooth max of the weighted losses (→ max as μ → 0).
    λ defaults to 1/k, the ideal point z to 0.

    ``recipe="log-nadir"`` is the authors' multi-task recipe (their STCH_MTL code, LibMTL's STCH):
    for the epochs up to ``warmup_epoch`` the loss is Σ log Lᵢ (w = 1/(L + 1e-20)), the last of
    them also averaging the losses into the nadir point n; afterwards the loss is
    k·μ log Σ exp(log(Lᵢ/nᵢ + 1e-20)/μ), i.e. w = k softmax(log(L/n + 1e-20)/μ) ⊙ 1/(L + 1e-20 n).
    An epoch closes every ``steps_per_epoch`` calls, or at :meth:`end_epoch` when it is None.
    State (recipe only): the epoch, the calls in it and the nadir sums.
    """

    def __init__(
        self,
        mu: float = 1.0,
        pref_vector: Tensor | None = None,
        reference: Tensor | None = None,
        recipe: Literal["plain", "log-nadir"] = "plain",
        warmup_epoch: int = 0,
        steps_per_epoch: int | None = None,
    ) -> None:
        self.mu = check_real("STCH", "mu", mu, low=0.0, low_open=True)
        self.pref_vector = check_vector("STCH", "pref_vector", pref_vector)
        self.reference = check_vector("STCH", "reference", reference)
        self.recipe = check_choice("STCH", "recipe", recipe, ("plain", "log-nadir"))
        self.warmup_epoch = check_int("STCH", "warmup_epoch", warmup_epoch, low=0)
        if steps_per_epoch is not None:
            check_int("STCH", "steps_per_epoch (or None)", steps_per_epoch, low=1)
        self.steps_per_epoch = steps_per_epoch
        if self.recipe == "log-nadir" and (pref_vector is not None or reference is not None):
            raise ValueError(
                "STCH: pref_vector and reference belong to recipe='plain'; the log-nadir recipe "
                "has neither."
            )
        self.reset()

    def reset(self) -> None:
        self._epoch = 0
        self._calls = 0
        self._sum: Tensor | None = None
        self._count = 0
        self._nadir: Tensor | None = None

    def end_epoch(self) -> None:
        """Close the current epoch (the recipe's warm-up counts epochs)."""
        self._epoch += 1
        self._calls = 0

    def _log_nadir(self, losses: Tensor) -> Tensor:
        check_positive_losses("STCH (log-nadir recipe)", losses)
        L = losses.detach()
        if self._epoch <= self.warmup_epoch:
            if self._epoch == self.warmup_epoch:
                self._sum = L.clone() if self._sum is None else self._sum + L
                self._count += 1
            w = 1.0 / (L + 1e-20)
        else:
            if self._nadir is None:
                if self._sum is None:
                    raise RuntimeError(
                        "STCH: no loss was seen during the warm-up epoch, so there is no nadir "
                        "point."
                    )
                self._nadir = self._sum / self._count
            n = self._nadir.to(L)
            k = L.shape[-1]
            w = k * torch.softmax(torch.log(L / n + 1e-20) / self.mu, dim=-1) / (L + 1e-20 * n)
        self._calls += 1
        if self.steps_per_epoch is not None and self._calls >= self.steps_per_epoch:
            self.end_epoch()
        return w

    def state_dict(self) -> dict[str, Any]:
        if self.recipe == "plain":
            return {}
        return clone_state(
            {
                "epoch": self._epoch,
                "calls": self._calls,
                "sum": self._sum,
                "count": self._count,
                "nadir": self._nadir,
            }
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.recipe == "plain":
            super().load_state_dict(state_dict)
            return
        s = clone_state(state_dict)
        self._epoch, self._calls, self._count = int(s["epoch"]), int(s["calls"]), int(s["count"])
        self._sum, self._nadir = s["sum"], s["nadir"]

    def compute(self, *, losses: Tensor) -> Tensor:
        if self.recipe == "log-nadir":
            return self._log_nadir(losses)
        k = losses.shape[-1]
        lam = torch.full((k,), 1.0 / k, dtype=losses.dtype, device=losses.device)
        if self.pref_vector is not None:
            lam = self.pref_vector.to(dtype=losses.dtype, device=losses.device)
        z = (
            0.0
            if self.reference is None
            else self.reference.to(dtype=losses.dtype, device=losses.device)
        )
        for name, v in (("pref_vector", self.pref_vector), ("reference", self.reference)):
            if v is not None and v.shape[-1] != k:
                raise ValueError(f"{name} has {v.shape[-1]} entries but there are {k} tasks.")
        return lam * torch.softmax(lam * (losses - z) / self.mu, dim=-1)
