"""The MultiLeNet of Sener & Koltun (2018) for MultiMNIST: a LeNet encoder and one MLP head per
task.

Encoder: conv(1→10, 5) → max-pool 2 → ReLU → conv(10→20, 5) → dropout → max-pool 2 → ReLU →
flatten (320) → linear(320→50) → ReLU, giving z ∈ ℝ⁵⁰. Head: linear(50→50) → ReLU → linear(50→C).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LeNetEncoder", "MultiLeNet"]


class LeNetEncoder(nn.Module):
    """(B, 1, 28, 28) images -> (B, 50) features."""

    feature_dim = 50

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.drop = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(320, self.feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"expected images of shape (B, 1, 28, 28), got {tuple(x.shape)}.")
        h = torch.relu(nn.functional.max_pool2d(self.conv1(x), 2))
        h = torch.relu(nn.functional.max_pool2d(self.drop(self.conv2(h)), 2))
        return torch.relu(self.fc(h.flatten(1)))


class MultiLeNet(nn.Module):
    """Shared LeNet encoder and ``n_tasks`` heads; forward returns (z, [logits_1, …, logits_k])."""

    def __init__(self, n_tasks: int = 2, n_classes: int = 10, dropout: float = 0.0) -> None:
        super().__init__()
        if n_tasks < 1 or n_classes < 2:
            raise ValueError(f"need n_tasks ≥ 1 and n_classes ≥ 2, got {n_tasks}, {n_classes}.")
        self.encoder = LeNetEncoder(dropout)
        d = LeNetEncoder.feature_dim
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, n_classes))
            for _ in range(n_tasks)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.encoder(x)
        return z, [h(z) for h in self.heads]
