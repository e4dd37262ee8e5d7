"""Validation split and model selection for the harness.

* :func:`carve_validation`: a validation subset of the training set, a function of (n, fraction,
  seed) only, so a run and its single-task baselines of the same seed see the same split.
* :class:`Selector`: the validation criterion of each epoch as a score s_e (lower is better) and
  the selected epoch e* = argmin_e s_e (the first epoch on ties; ``"last"`` selects the last one).
  Criteria: ``val_loss`` (mean task loss on validation), ``metric`` / ``primary`` (one validation
  metric, sign-corrected: s = −M when higher is better; ``primary`` is the first metric of the first
  task), ``delta_m`` (Δm% of the validation metrics against single-task validation metrics).
  A single-task baseline of task i selects on its own task: its validation loss for ``val_loss``,
  else s = mean_j σ_j M_j / |R_j| over task i's metrics j (σ_j = −1 when higher is better, R_j the
  value at its first evaluated epoch, 1 if zero) — with one metric, simply the sign-corrected
  metric.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .metrics import delta_m

__all__ = ["Selector", "carve_validation"]


def carve_validation(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, val) row indices of a training set of n rows: val = round(fraction·n) rows drawn by
    a generator seeded with ``seed``; both sorted, disjoint, covering 0..n−1.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction!r}.")
    n_val = round(fraction * n)
    if n_val < 1 or n_val > n - 1:
        raise ValueError(
            f"val_fraction = {fraction} of {n} training rows leaves {n_val} for validation and "
            f"{n - n_val} for training; both need at least one (change val_fraction)."
        )
    g = torch.Generator().manual_seed(104_729 + 7_919 * seed)
    perm = torch.randperm(n, generator=g)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


class Selector:
    """Tracks the best epoch of a run under a selection criterion (see the module docstring).

    ``specs``: {metric key: higher_is_better} of the problem; ``tasks``: task names in order;
    ``single_task``: i for a single-task baseline of task i; ``baseline``: validation metrics of the
    single-task runs (criterion ``delta_m``).
    """

    def __init__(
        self,
        criterion: str,
        specs: Mapping[str, bool],
        tasks: list[str],
        *,
        metric: str | None = None,
        single_task: int | None = None,
        baseline: Mapping[str, float] | None = None,
    ) -> None:
        if criterion not in ("last", "val_loss", "metric", "primary", "delta_m"):
            raise ValueError(f"unknown selection criterion {criterion!r}.")
        self.criterion, self.specs, self.tasks = criterion, dict(specs), list(tasks)
        self.single_task = single_task
        self.baseline = dict(baseline or {})
        if criterion == "metric" and single_task is None and metric not in self.specs:
            raise ValueError(
                f"selection metric {metric!r} is not a metric of this problem: "
                f"{sorted(self.specs)}."
            )
        if criterion == "primary":
            metric = next(k for k in self.specs if k.split("/", 1)[0] == self.tasks[0])
        self.metric = metric
        if criterion == "delta_m" and single_task is None:
            missing = [k for k in self.specs if k not in self.baseline]
            if missing:
                raise ValueError(
                    "selection by validation Δm needs a baseline value for every metric; missing "
                    f"{missing}. "
                    "Add them to the config's [baseline] table, or set single_task = true so that "
                    "the "
                    "single-task runs provide them."
                )
        self.best_epoch: int | None = None
        self.best_score: float | None = None
        self.reference: dict[str, float] | None = (
            None  # single-task: first epoch's own-task metrics
        )

    @property
    def needs_validation(self) -> bool:
        return self.criterion != "last"

    def _own_task(self, val: Mapping[str, float]) -> float:
        assert self.single_task is not None
        task = self.tasks[self.single_task]
        keys = [k for k in self.specs if k.split("/", 1)[0] == task]
        if self.reference is None:
            self.reference = {k: float(val[k]) for k in keys}
        terms = [
            (-1.0 if self.specs[k] else 1.0) * float(val[k]) / (abs(self.reference[k]) or 1.0)
            for k in keys
        ]
        return sum(terms) / len(terms)

    def score(self, val: Mapping[str, float], val_losses: list[float] | None) -> float | None:
        """s_e of one epoch from its validation metrics {key: value} and task losses (None for
        "last").
        """
        c = self.criterion
        if c == "last":
            return None
        if c == "val_loss":
            if val_losses is None:
                raise ValueError("criterion 'val_loss' needs the validation losses.")
            if self.single_task is not None:
                return float(val_losses[self.single_task])
            return sum(val_losses) / len(val_losses)
        if self.single_task is not None:
            return self._own_task(val)
        if c in ("metric", "primary"):
            assert self.metric is not None
            v = float(val[self.metric])
            return -v if self.specs[self.metric] else v
        return delta_m(val, self.baseline, self.specs)

    def update(self, epoch: int, score: float | None) -> bool:
        """Record epoch ``epoch`` (1-based) with score s; True when it becomes the selected
        epoch.
        """
        if score is not None and not math.isfinite(score):
            raise FloatingPointError(
                f"validation criterion {self.criterion!r} is {score} at epoch {epoch}."
            )
        if score is None or self.best_score is None or score < self.best_score:
            self.best_epoch, self.best_score = epoch, score
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "reference": self.reference,
            "baseline": self.baseline,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_epoch, self.best_score = state["best_epoch"], state["best_score"]
        self.reference, self.baseline = state["reference"], dict(state["baseline"])
