"""Small float64 models shared by the second-order tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TwoTaskMLP(nn.Module):
    """Shared tanh layer, two heads: a regression head (MSE) and a 3-class head (cross-entropy)."""

    def __init__(self, d_in: int = 4, hidden: int = 5, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.enc = nn.Linear(d_in, hidden).double()
        self.reg = nn.Linear(hidden, 1).double()
        self.cls = nn.Linear(hidden, 3).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.enc(x))
        return self.reg(h).squeeze(-1), self.cls(h)


def task_losses(
    z: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """(2,) losses: mean squared error of head 1, cross-entropy of head 2."""
    return torch.stack([((z[0] - y) ** 2).mean(), nn.functional.cross_entropy(z[1], c)])


@pytest.fixture
def problem() -> dict:
    torch.manual_seed(0)
    model = TwoTaskMLP()
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.randn(7, dtype=torch.float64)
    c = torch.randint(0, 3, (7,))
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone() for p in model.parameters())

    def model_fn(p):
        return torch.func.functional_call(model, dict(zip(names, p, strict=True)), (x,))

    def loss_fn(z):
        return task_losses(z, y, c)

    def fn(p):
        return loss_fn(model_fn(p))

    return {
        "model": model,
        "x": x,
        "y": y,
        "c": c,
        "params": params,
        "model_fn": model_fn,
        "loss_fn": loss_fn,
        "fn": fn,
    }
