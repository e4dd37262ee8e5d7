"""A tiny generated problem for tests: a regression task and a classification task."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..problem import Metric, Problem
from .mlp import MultiHeadMLP

__all__ = ["SyntheticProblem"]


class SyntheticProblem(Problem):
    """Task "reg" (regression, MSE ↓) and task "cls" (two classes, accuracy ↑), both functions of a
    shared linear feature s = xᵀw of x ~ N(0, I): y_reg = s + 0.1·ε, y_cls = [s + x₀ > 0].
    """

    tasks = ["reg", "cls"]
    metrics = [Metric("reg", "mse", False), Metric("cls", "acc", True)]

    def __init__(
        self, n_train: int = 64, n_test: int = 32, dim: int = 5, data_seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(data_seed)
        x = torch.randn(n_train + n_test, dim, generator=g)
        w = torch.randn(dim, generator=g)
        s = x @ w
        y = torch.stack([s + 0.1 * torch.randn(s.shape, generator=g), (s + x[:, 0] > 0).float()], 1)
        super().__init__(x[:n_train], y[:n_train], x[n_train:], y[n_train:])
        self.dim = dim

    def make_model(self, hidden: int = 8) -> nn.Module:
        return MultiHeadMLP(self.dim, [hidden], [1, 1])

    def losses(self, outputs: list[Tensor], y: Tensor) -> list[Tensor]:
        return [self.task_loss(i, outputs, y) for i in range(2)]

    def task_loss(self, i: int, outputs: list[Tensor], y: Tensor) -> Tensor:
        """MSE of task 0 ("reg"), binary cross-entropy of the logits of task 1 ("cls")."""
        if i == 0:
            return nn.functional.mse_loss(outputs[0].squeeze(-1), y[:, 0])
        return nn.functional.binary_cross_entropy_with_logits(outputs[1].squeeze(-1), y[:, 1])

    def metric_sums(self, outputs: list[Tensor], y: Tensor) -> dict[str, Tensor]:
        return {
            "reg/mse": ((outputs[0].squeeze(-1) - y[:, 0]) ** 2).sum(),
            "cls/acc": ((outputs[1].squeeze(-1) > 0).float() == y[:, 1]).sum(),
        }
