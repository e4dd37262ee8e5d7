"""Shared setup of the Lightning tests: the problem sizes, the Lightning import, a fixed
regression data set with three tasks and its per-task squared-error losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

K, D, H = 3, 4, 5


def pl() -> Any:
    """``lightning.pytorch`` when installed, else ``pytorch_lightning``."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl
    return pl


def data(n: int = 32) -> tuple[Tensor, Tensor]:
    """(x (n, D), y (n, K)) in float64 from a fixed seed; the task targets have different means."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    y = torch.randn(n, K, generator=g, dtype=torch.float64) + torch.tensor(
        [0.0, 2.0, -2.0], dtype=torch.float64
    )
    return x, y


def losses(pred: Tensor, y: Tensor) -> dict[str, Tensor]:
    """{"t<i>": mean squared error of column i} for the K tasks."""
    return {f"t{i}": ((pred[:, i] - y[:, i]) ** 2).mean() for i in range(K)}
