"""A shared MLP trunk with one linear head per task, the model of the tabular problems."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MultiHeadMLP"]


class MultiHeadMLP(nn.Module):
    """z = f(x) (Linear + ReLU layers of widths ``hidden``) and one linear head per task with
    ``outs[i]`` outputs: ``forward`` returns (z, [head_i(z)]).
    """

    def __init__(self, d_in: int, hidden: list[int], outs: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = d_in
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(d, o) for o in outs)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(x)
        return z, [h(z) for h in self.heads]
