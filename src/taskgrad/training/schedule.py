"""When to recompute the weights, and on which tasks.

* :class:`Periodic`: recompute the weights every ``period`` steps and reuse them in between;
  optionally feed the method an exponential moving average of the Gram,
  Ḡ_t = β Ḡ_{t-1} + (1 − β) G_t (on refresh steps; Ḡ starts at the first G).
* :class:`TaskSubsample`: for very many tasks, draw m of the k tasks uniformly without
  replacement, compute the m×m Gram only for them and weight only their losses.
  Unbiased rescaling: each task is drawn with probability π = m/k, so for fixed weights a,
  Σ_{i∈S} (aᵢ/π) ∇Lᵢ is an unbiased estimate of Σᵢ aᵢ ∇Lᵢ (Horvitz–Thompson). The method's
  weights on S sum like weights on m tasks; ``normalized=True`` (default, for methods whose
  weights sum to 1: Mean, MGDA, …) applies them as they are, which equals the rule above with
  aᵢ = (m/k)·w_S,i — exactly unbiased for Mean (E = (1/k)Σ∇Lᵢ); ``normalized=False`` (for
  per-task weights, e.g. all ones) multiplies them by k/m. For weights that depend on the
  Gram (MGDA, …) the estimate is of the sub-problem's direction: no unbiased estimator of a
  nonlinear w(G) exists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["Periodic", "TaskSubsample"]


def _clone_or_none(x: Tensor | None) -> Tensor | None:
    """A copy of the tensor (None stays None)."""
    return None if x is None else x.clone()


class Periodic:
    """Refresh the weights on steps 0, K, 2K, … (counting taken steps); ``ema`` = β ∈ [0, 1)."""

    def __init__(self, period: int = 1, ema: float | None = None) -> None:
        if not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be a positive int, got {period!r}.")
        if ema is not None and not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (the weight of the past Gram), got {ema!r}.")
        self.period = period
        self.ema = ema
        self.t = 0
        self.gram_avg: Tensor | None = None
        self.weights: Tensor | None = None
        self.subset: Tensor | None = None

    def due(self) -> bool:
        """Whether the weights must be recomputed at this step."""
        return self.weights is None or self.t % self.period == 0

    def smooth(self, gram: Tensor) -> Tensor:
        """The Gram the method sees: G itself, or the EMA Ḡ updated with G."""
        if self.ema is None:
            return gram
        if self.gram_avg is None or self.gram_avg.shape != gram.shape:
            self.gram_avg = gram.detach().clone()
        else:
            self.gram_avg = self.ema * self.gram_avg + (1.0 - self.ema) * gram.detach()
        return self.gram_avg

    def remember(self, weights: Tensor, subset: Tensor) -> None:
        """Keep the weights (and the task subset they belong to) until the next refresh."""
        self.weights = weights.detach().clone()
        self.subset = subset.clone()

    def advance(self) -> None:
        """Count one taken step."""
        self.t += 1

    def state_dict(self) -> dict[str, Any]:
        """Counter, EMA Gram and the weights in use."""
        c = _clone_or_none
        return {
            "period": self.period,
            "ema": self.ema,
            "t": self.t,
            "gram_avg": c(self.gram_avg),
            "weights": c(self.weights),
            "subset": c(self.subset),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state["period"] != self.period or state["ema"] != self.ema:
            raise ValueError(
                f"checkpoint is for period={state['period']}, ema={state['ema']} but this schedule "
                f"has period={self.period}, ema={self.ema}."
            )
        c = _clone_or_none
        self.t = int(state["t"])
        self.gram_avg, self.weights, self.subset = (
            c(state["gram_avg"]),
            c(state["weights"]),
            c(state["subset"]),
        )


class TaskSubsample:
    """Draw m of k tasks uniformly without replacement from a seeded generator (checkpointed)."""

    def __init__(self, m: int, *, seed: int = 0, normalized: bool = True) -> None:
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"m (tasks per step) must be a positive int, got {m!r}.")
        self.m = m
        self.seed = seed
        self.normalized = normalized
        self._gen = torch.Generator()
        self._gen.manual_seed(seed)

    def draw(self, k: int) -> Tensor:
        """Sorted indices of the m drawn tasks (all k when m ≥ k)."""
        if self.m >= k:
            return torch.arange(k)
        return torch.randperm(k, generator=self._gen)[: self.m].sort().values

    def scale(self, k: int) -> float:
        """Factor on the method's weights over the drawn tasks: 1 (normalized) or k/m."""
        return 1.0 if self.normalized or self.m >= k else k / self.m

    def state_dict(self) -> dict[str, Any]:
        """Generator state."""
        return {
            "m": self.m,
            "seed": self.seed,
            "normalized": self.normalized,
            "generator": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state["m"] != self.m or state["normalized"] != self.normalized:
            raise ValueError(f"checkpoint is for m={state['m']}, normalized={state['normalized']}.")
        self.seed = state["seed"]
        self._gen.set_state(state["generator"])
