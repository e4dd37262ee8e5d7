"""Learning-rate schedules of the harness, stepped once per epoch (after that epoch's evaluation).

With lr₀ the optimizer's lr and e the number of finished epochs (the lr of epoch e + 1):

* ``none``: lr₀.
* ``step``: lr₀ γ^⌊e / step_size⌋, or lr₀ γ^|{m ∈ milestones : m ≤ e}|.
* ``cosine``: η_min + (lr₀ − η_min)(1 + cos(π e / t_max)) / 2 for e ≤ t_max (torch's
CosineAnnealingLR,
  which rises again after t_max: keep t_max ≥ epochs; it defaults to epochs).
* ``plateau``: torch's ReduceLROnPlateau (mode "min"): lr ← max(lr·factor, min_lr) when the
monitored
  value has not improved (rel: below best·(1 − threshold); abs: below best − threshold) for more
  than
  ``patience`` epochs; then ``cooldown`` epochs without counting. Monitored: ``val_loss`` (mean task
  loss on validation; a single-task baseline's own task loss), ``criterion`` (the selection score,
  e.g. validation Δm, as Nash-MTL's QM9 protocol), or ``train_loss`` (the epoch's mean training
  loss).

The scheduler's state is saved in each checkpoint, so a resumed run follows the same schedule.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["build_scheduler", "step_scheduler"]


def build_scheduler(optimizer: torch.optim.Optimizer, spec: dict[str, Any]) -> Any:
    """The torch scheduler of a normalized [scheduler] table (None for ``name = "none"``)."""
    name = spec.get("name", "none")
    sched = torch.optim.lr_scheduler
    if name == "none":
        return None
    if name == "step":
        if "milestones" in spec:
            return sched.MultiStepLR(
                optimizer, milestones=list(spec["milestones"]), gamma=spec["gamma"]
            )
        return sched.StepLR(optimizer, step_size=spec["step_size"], gamma=spec["gamma"])
    if name == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=spec["t_max"], eta_min=spec["eta_min"])
    if name == "plateau":
        return sched.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=spec["factor"],
            patience=spec["patience"],
            threshold=spec["threshold"],
            threshold_mode=spec["threshold_mode"],
            cooldown=spec["cooldown"],
            min_lr=spec["min_lr"],
        )
    raise ValueError(f"unknown scheduler {name!r}; use none, step, cosine or plateau.")


def step_scheduler(scheduler: Any, monitored: float | None) -> None:
    """One end-of-epoch step (``monitored`` is required by ``plateau`` and ignored otherwise)."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if monitored is None:
            raise ValueError("the plateau scheduler needs its monitored value every epoch.")
        scheduler.step(monitored)
    else:
        scheduler.step()
